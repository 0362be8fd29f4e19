"""A ``transformers`` sequence-classification reward model (its own tokenizer, its own input format), scored with
the prefix cache when it is a decoder model (:mod:`tqstar.reward.prefix_cache`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError, RewardError, preview
from ..lm.loading import DTYPES, check_device, check_model_path, load_pretrained
from .base import Range, Reward
from .prefix_cache import prefix_scorer


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

        check_device(device)
        check_model_path(str(path))
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
