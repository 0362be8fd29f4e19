"""The offline built-in rewards, from PyPI (``pip install 'tqstar[rewards]'``): ``sentiment`` (VADER compound, in
[-1, 1]) and ``harmless`` (1 - P(profane), in [0, 1])."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .base import CallableReward, Reward


def sentiment_reward() -> Reward:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as exc:
        raise ConfigError("the `sentiment` reward needs vaderSentiment; pip install 'tqstar[rewards]'") from exc
    analyzer = SentimentIntensityAnalyzer()

    def sentiment(prompts: list[str], responses: list[str]) -> list[float]:
        return [analyzer.polarity_scores(r)["compound"] for r in responses]

    return CallableReward(sentiment, name="sentiment", range=(-1.0, 1.0))


def harmless_reward() -> Reward:
    try:
        from profanity_check import predict_prob
    except ImportError as exc:
        raise ConfigError("the `harmless` reward needs alt-profanity-check; pip install 'tqstar[rewards]'") from exc

    def harmless(prompts: list[str], responses: list[str]) -> list[float]:
        return (1.0 - predict_prob(list(responses))).tolist()

    return CallableReward(harmless, name="harmless", range=(0.0, 1.0))


BUILTIN_REWARDS: dict[str, Callable[[], Reward]] = {"sentiment": sentiment_reward, "harmless": harmless_reward}
