"""The naive reference: greedy TQ* the way the official research code does it. The yardstick for speed.

Every step it re-encodes the SFT prefix from scratch, and for *each* candidate runs a fresh ``generate`` of
the rollout model from the full prefix (for up to ``rollout_len`` tokens, fewer when the response has less left) (no cache carried across steps, no prefix sharing between candidates),
decodes the rollout to text and scores it. Small and obviously correct; the engine must choose the same
tokens (``tests/integration/test_speed.py``), and ``bench/speed.py`` measures how much faster it is.

:func:`naive_bridged_q` is the same yardstick for one value through the text bridge (a baseline with another
tokenizer): Q̂ by its text-level definition (``tests/lm/test_bridge.py``, ``tests/integration/test_weak_to_strong.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..engine import Engine
from ..params import DecodeParams
from ..text import cut_at_stop


@torch.inference_mode()
def naive_generate(engine: Engine, prompt: str, params: DecodeParams) -> list[int]:
    """Greedy ``tq-direct`` (or ``cd``) response token ids for ``prompt``, computed naively."""
    assert params.method in ("tq-direct", "cd") and params.temperature == 0 and params.n_rollouts == 1
    assert params.rollout_temperature == 0, "the reference rolls out greedily"
    assert not params.stop, "the reference knows no stop strings"
    assert engine.models.bridge is None, "the reference shares the SFT vocabulary (the bridge has naive_bridged_q)"
    models = engine.models
    sft = models.sft
    roller = models.lm("baseline" if params.method == "tq-direct" else "sft")
    sft_ids, roll_ids = sft.encode_prompt(prompt), roller.encode_prompt(prompt)
    eos = sorted(sft.eos_token_ids)
    response: list[int] = []
    for _ in range(params.max_new_tokens):
        logits = sft.model(torch.tensor([sft_ids + response], device=sft.device)).logits[0, -1].float()
        top_lp, candidates = torch.log_softmax(logits, -1).topk(params.k)
        q = []
        budget = min(params.rollout_len, params.max_new_tokens - len(response) - 1)  # what the response has left
        for z in candidates.tolist():
            tail: list[int] = []
            if z not in eos and budget > 0:
                prefix = torch.tensor([roll_ids + response + [z]], device=roller.device)
                out = roller.model.generate(
                    prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=budget,
                    do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=eos[0],
                )
                tail = out[0, prefix.shape[1]:].tolist()
            text = roller.tokenizer.decode(response + [z] + tail, skip_special_tokens=True)
            q.append(models.reward.score([prompt], [text])[0])
        choice = int(candidates[int((top_lp.cpu() + params.alpha * torch.tensor(q)).argmax())])
        response.append(choice)
        if choice in eos:
            break
    return response


@torch.inference_mode()
def naive_bridged_q(sft, baseline, prompt: str, response: list[int], z: int, params: DecodeParams,
                    reward: Callable[[list[str], list[str]], Sequence[float]]) -> float:
    """Q̂(s, z) of greedy tq-direct through the text bridge, by the definition: decode the SFT response with z, drop
    an incomplete last character, re-encode in the baseline's tokenizer after its own prompt, roll out with
    ``generate``, decode the rollout in context, join, cut at stop strings, score with ``reward(prompts, texts)``.
    ``sft`` and ``baseline`` are :class:`~tqstar.lm.hf.TransformersLM` models."""
    sft_tok, bl_tok = sft.tokenizer, baseline.tokenizer
    full = sft_tok.decode(response + [z], skip_special_tokens=True)
    text = full.rstrip("\ufffd")
    budget = min(params.rollout_len, params.max_new_tokens - len(response) - 1)
    ends = z == sft_tok.eos_token_id or budget <= 0 or any(s in full for s in params.stop)
    if not ends:
        encoded = bl_tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []
        ids = torch.tensor([baseline.encode_prompt(prompt) + encoded], device=baseline.device)
        out = baseline.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
                                      eos_token_id=bl_tok.eos_token_id, pad_token_id=bl_tok.pad_token_id)
        tail = out[0, ids.shape[1]:].tolist()
        before = bl_tok.decode(encoded, skip_special_tokens=True)
        after = bl_tok.decode(encoded + tail, skip_special_tokens=True)
        same = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
        text = (text + after[same:]).rstrip("\ufffd")
    return reward([prompt], [cut_at_stop(text, params.stop)])[0]
