"""What the decoder tracks per prompt, and what every method returns: :class:`Response` with accounting."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lm.base import LanguageModel
    from .reward import Reward


@dataclass
class Models:
    """The models and rewards one engine decodes with; ``None`` where a method does not need one."""

    sft: LanguageModel
    baseline: LanguageModel | None = None
    reward: Reward | None = None
    baseline_reward: Reward | None = None

    def lm(self, role: str) -> LanguageModel:
        model = self.sft if role == "sft" else self.baseline
        assert model is not None, f"no {role} model"
        return model


@dataclass
class Accounting:
    """Compute spent on one response, reported the same way by every method.

    ``*_forward_tokens`` count tokens each model actually ran (cached prefix tokens are not re-counted);
    ``rollouts`` and ``rollout_tokens`` count continuations run and their generated tokens;
    ``reused_rollouts`` counts candidates valued from the previous step's rollout (at the cost of at most one
    generated token); ``pruned`` counts candidates skipped because they could not win; ``reward_calls``
    counts texts a reward actually evaluated during decoding (identical or cached texts are scored once);
    ``wall_time_s`` runs from the start of the batch until this response finished; ``batch_size`` is how
    many prompts shared that wall time (decoded together).
    """

    sft_forward_tokens: int = 0
    baseline_forward_tokens: int = 0
    rollouts: int = 0
    rollout_tokens: int = 0
    reused_rollouts: int = 0
    pruned: int = 0
    reward_calls: int = 0
    steps: int = 0
    wall_time_s: float = 0.0
    batch_size: int = 1

    def add_forward(self, role: str, tokens: int) -> None:
        if role == "sft":
            self.sft_forward_tokens += tokens
        else:
            self.baseline_forward_tokens += tokens


@dataclass
class PromptState:
    """One prompt being decoded: its prompt ids per role, the shared response tokens, and bookkeeping."""

    prompt: str
    prompt_ids: dict[str, list[int]]
    response: list[int] = field(default_factory=list)
    accounting: Accounting = field(default_factory=Accounting)
    kl: list[float] = field(default_factory=list)
    kl_bound: list[float] = field(default_factory=list)
    trace: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    text: str = ""
    started: float = field(default_factory=time.perf_counter)

    def seq(self, role: str) -> list[int]:
        """The sequence the ``role`` model sees: its own prompt ids, then the response so far."""
        return self.prompt_ids[role] + self.response

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Response:
    """A finished response with its reward, KL to the SFT model and accounting.

    ``kl`` sums the exact per-step KL(π_dec(·|s_t) ‖ π_sft(·|s_t)) of the distribution each token was decoded
    from (π_sft normalised over the full vocabulary, π_dec zero outside the top-k; a greedy choice is a point
    mass); ``kl_bound`` sums the per-step bound α·(R_max − R_min) + log(1/π_sft(top-k)) on the KL of the
    softmax-score distribution (``None`` when the reward range is unknown). Trajectory-level methods report
    ``kl`` as ``None``.
    """

    prompt: str
    method: str
    text: str
    token_ids: list[int]
    finish_reason: str
    reward: float | None
    kl: float | None
    kl_bound: float | None
    kl_per_step: list[float]
    accounting: Accounting
    trace: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
