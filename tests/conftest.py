"""Shared fixtures: tiny random models built inside the tests (no download), one torch thread.

``TQSTAR_TEST_DEVICE=cuda`` puts the ``sft``/``baseline`` models (and the LM contract's transformers backends) on
that device, so the device-sensitive tests check the CUDA hot path (``scripts/gpu_check.sh``); default ``cpu``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(1)

#: This directory: on the path of every test (pytest `pythonpath`) and of the subprocesses they start, so
#: ``from conftest import ...`` and rewards given as ``conftest:vowel_share`` resolve from every test folder.
TESTS_DIR = Path(__file__).resolve().parent

#: The device the transformers models of the tests run on.
TEST_DEVICE = os.environ.get("TQSTAR_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """Directories of the tiny ``sft``, ``baseline`` and ``reward`` models (built once per session)."""
    from tqstar.builtin.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def builtin_tiny(monkeypatch, tiny_paths):
    """The built-in default (no --sft) builds its tiny models under $TQSTAR_CACHE/tiny: point it at the session's
    copies; and no TQSTAR_DEBUG from the environment, so errors are the one line a user sees."""
    root = tiny_paths["sft"].parent.parent
    (root / "tiny").mkdir(exist_ok=True)
    for role, path in tiny_paths.items():
        if not (root / "tiny" / role).exists():
            (root / "tiny" / role).symlink_to(path)
    monkeypatch.setenv("TQSTAR_CACHE", str(root))
    monkeypatch.delenv("TQSTAR_DEBUG", raising=False)


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


def write_eval_config(tmp_path, tiny_paths, n_prompts: int = 6, **extra) -> str:
    """An eval config over the tiny models and ``n_prompts`` prompts (JSON, which is YAML); returns its path."""
    (tmp_path / "prompts.txt").write_text("\n".join(f"prompt number {i} about the park" for i in range(n_prompts)))
    config = {
        "sft": {"path": str(tiny_paths["sft"]), "chat_template": False},
        "baseline": {"path": str(tiny_paths["baseline"]), "chat_template": False},
        "reward": "conftest:vowel_share",
        "judges": {"length": "conftest:vowel_share"},
        "defaults": {"max_new_tokens": 5, "k": 3, "rollout_len": 3},
        "methods": [{"method": "sft"}, {"method": "args", "alpha": [0.5, 2.0]}, {"method": "tq-direct", "alpha": 1.0}],
        "prompts": {"source": str(tmp_path / "prompts.txt")},
        "output": str(tmp_path / "out.jsonl"),
        "batch_size": 2,
        **extra,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)
