"""Tiny built-in models: a BPE tokenizer and ~0.1 M-parameter random Llama models, built in a second.

They are the built-in default of ``tqstar generate`` and ``tqstar demo`` until a real model is configured,
and the models the tests build. Their text is gibberish; they show the machinery, not alignment.
``build_tiny_models(dir)`` writes ``sft/``, ``baseline/`` and ``reward/`` transformers directories
(deterministic: fixed seeds) and returns their paths; an existing, complete directory is reused.
"""

from __future__ import annotations

import os
from pathlib import Path

CORPUS = """\
The sun was warm and the sky was clear, so we walked to the park and sat by the lake.
I am happy to help you with that question. Here is a short and friendly answer.
Please be kind to the people around you; a small good deed can make a great day.
The cat sat on the mat. The dog ran in the yard. Birds sang in the tall green trees.
Thank you for your patience. I love this wonderful idea and I think it will work well.
This is terrible and I hate it. The food was bad, the room was cold and the staff was rude.
How do I make a cup of tea? Boil water, add the tea leaves, wait three minutes and pour.
We can learn a lot from books, from friends and from the mistakes we make along the way.
"""

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<unk>"]


def build_tokenizer():
    """A lower-cased word-level tokenizer over the words of :data:`CORPUS`, with a small chat template.

    Word-level keeps the tiny models' text readable ("the cat was happy ..."), so text rewards such as VADER
    sentiment respond to it.
    """
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(re.findall(r"\w+|[^\w\s]", CORPUS.lower())))
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=SPECIALS[3:6],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(vocab_size: int, *, num_labels: int | None = None, layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig

    extra = {} if num_labels is None else {"num_labels": num_labels}
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, **extra,
    )


def build_tiny_models(directory: str | os.PathLike, *, seeds: tuple[int, int, int] = (0, 1, 2)) -> dict[str, Path]:
    """Write tiny ``sft``, ``baseline`` and ``reward`` models under ``directory``; return their paths."""
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    root = Path(directory)
    paths = {role: root / role for role in ("sft", "baseline", "reward")}
    if all((p / "config.json").exists() and (p / "tokenizer.json").exists() for p in paths.values()):
        return paths
    tok = build_tokenizer()
    vocab = len(tok)
    for (role, path), seed in zip(paths.items(), seeds):
        torch.manual_seed(seed)
        if role == "reward":
            model = LlamaForSequenceClassification(tiny_config(vocab, num_labels=1))
        else:
            model = LlamaForCausalLM(tiny_config(vocab))
            # Sharpen the output distribution so greedy text is not uniform noise, and keep the special
            # tokens other than EOS (ids 0, 1, 3-6) from being generated.
            with torch.no_grad():
                model.lm_head.weight.mul_(8.0)
                model.lm_head.weight[[0, 1, 3, 4, 5, 6]] = 0.0
        model.eval()
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return paths


def default_tiny_dir() -> Path:
    """Where the built-in tiny models live: ``$TQSTAR_CACHE/tiny`` (default ``~/.cache/tqstar/tiny``)."""
    return Path(os.environ.get("TQSTAR_CACHE", Path.home() / ".cache" / "tqstar")) / "tiny"
