"""Shared fixtures: tiny random models built inside the tests (no download), one torch thread.

``TQSTAR_TEST_DEVICE=cuda`` puts the ``sft``/``baseline`` models (and the LM contract's transformers backends) on
that device, so the device-sensitive tests check the CUDA hot path (``scripts/gpu_check.sh``); default ``cpu``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(1)

#: The device the transformers models of the tests run on.
TEST_DEVICE = os.environ.get("TQSTAR_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """Directories of the tiny ``sft``, ``baseline`` and ``reward`` models (built once per session)."""
    from tqstar.builtin.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def sft(tiny_paths):
    from tqstar.lm.hf import TransformersLM

    return TransformersLM.from_pretrained(tiny_paths["sft"], name="tiny-sft", device=TEST_DEVICE)


@pytest.fixture()
def baseline(tiny_paths):
    from tqstar.lm.hf import TransformersLM

    return TransformersLM.from_pretrained(tiny_paths["baseline"], name="tiny-baseline", device=TEST_DEVICE)


def vowel_share(prompts, responses):
    """A toy reward in [0, 1]: the share of vowels among the response's letters."""
    out = []
    for text in responses:
        letters = [c for c in text.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
    return out


vowel_share.reward_range = (0.0, 1.0)
