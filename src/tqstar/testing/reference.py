"""The naive reference: greedy TQ* the way the official research code does it. The yardstick for speed.

Every step it re-encodes the SFT prefix from scratch, and for *each* candidate runs a fresh ``generate`` of
the rollout model from the full prefix (for up to ``rollout_len`` tokens, fewer when the response has less left) (no cache carried across steps, no prefix sharing between candidates),
decodes the rollout to text and scores it. Small and obviously correct; the engine must choose the same
tokens (``tests/test_speed.py``), and ``bench/speed.py`` measures how much faster it is.
"""

from __future__ import annotations

import torch

from ..engine import Engine
from ..params import DecodeParams


@torch.inference_mode()
def naive_generate(engine: Engine, prompt: str, params: DecodeParams) -> list[int]:
    """Greedy ``tq-direct`` (or ``cd``) response token ids for ``prompt``, computed naively."""
    assert params.method in ("tq-direct", "cd") and params.temperature == 0 and params.n_rollouts == 1
    assert params.rollout_temperature == 0, "the reference rolls out greedily"
    assert not params.stop, "the reference knows no stop strings"
    assert engine.models.bridge is None, "the reference shares the SFT vocabulary (the bridge has its own, in tests)"
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
