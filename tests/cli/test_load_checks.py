"""Loading refuses what would silently misbehave, in one sentence each: weights that would be initialised at random,
an adapter for another base model, a device this machine lacks, a model path that does not exist (at once, without
asking a hub); and loading is quiet (no progress bars, no FutureWarnings) in library use."""

from __future__ import annotations

import warnings

import pytest
import torch

from tqstar.errors import ConfigError, ModelLoadError
from tqstar.lm.hf import TransformersLM
from tqstar.lm.loading import check_device
from tqstar.reward import TransformersReward


# ---- weights that would be newly initialised -----------------------------------------------------------------
@pytest.mark.parametrize("label", [None, 0])
def test_causal_lm_directory_is_refused_as_a_reward_model(tiny_paths, label):
    """Loaded as a sequence classifier, a causal LM gets a random scoring head: different rewards every run."""
    path = str(tiny_paths["sft"])
    with pytest.raises(ModelLoadError) as info:
        TransformersReward(path, label=label)
    assert str(info.value) == (
        f"{path!r} has no trained weights for score.weight, which loading it as a reward model would initialise at"
        " random; give the directory of a trained AutoModelForSequenceClassification reward model with its tokenizer"
    )


def test_reward_model_directory_is_refused_as_a_causal_lm(tiny_paths):
    path = str(tiny_paths["reward"])
    with pytest.raises(ModelLoadError, match=r"has no trained weights for lm_head\.weight, which loading it as a"
                                             r" causal LM would initialise at random; give a directory"):
        TransformersLM.from_pretrained(path)


# ---- adapters ----------------------------------------------------------------------------------------------------
def _adapter(base_dir, out_dir):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                          init_lora_weights=False))
    model.save_pretrained(out_dir)
    return out_dir


def test_adapter_for_another_base_model_is_refused(tiny_paths, tmp_path):
    from transformers import LlamaForCausalLM

    from tqstar.builtin.tiny import build_tokenizer, tiny_config

    adapter = _adapter(tiny_paths["sft"], tmp_path / "adapter")
    other = tmp_path / "wider"
    tokenizer = build_tokenizer()
    LlamaForCausalLM(tiny_config(len(tokenizer), hidden=64)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(ModelLoadError) as info:
        TransformersLM.from_pretrained(other, adapter=adapter)
    message = str(info.value)
    assert message.startswith(f"adapter {str(adapter)!r} does not fit the model {str(other)!r} ("), message
    assert message.endswith("); give an adapter trained on this base model"), message
    assert "\n" not in message


@pytest.fixture()
def chatty_transformers():
    """transformers' defaults (bars on, warnings shown), whatever earlier tests (the CLI) switched off."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.enable_progress_bar()
    hf_logging.set_verbosity_warning()
    yield
    hf_logging.set_verbosity(verbosity)
    if not bars:
        hf_logging.disable_progress_bar()


def test_loading_is_quiet(tiny_paths, tmp_path, capfd, chatty_transformers):
    """No "Loading weights" bars, load reports or FutureWarnings from a library load, adapter included; the
    library leaves transformers' own settings as it found them."""
    from transformers.utils import logging as hf_logging

    adapter = _adapter(tiny_paths["sft"], tmp_path / "adapter")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TransformersLM.from_pretrained(tiny_paths["sft"], adapter=adapter)
        TransformersReward(str(tiny_paths["reward"]))
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert [str(w.message) for w in caught] == []
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == hf_logging.WARNING


# ---- devices -------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_device_without_cuda_is_one_sentence(tiny_paths):
    reason = "torch built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
    message = f"device 'cuda:0' is not available ({reason}); use --device cpu"
    with pytest.raises(ConfigError) as info:
        TransformersLM.from_pretrained(tiny_paths["sft"], device="cuda:0")
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        TransformersReward(str(tiny_paths["reward"]), device="cuda:0")
    assert str(info.value) == message


def test_unknown_device_string_is_refused():
    with pytest.raises(ConfigError) as info:
        check_device("gpu0")
    assert str(info.value) == "device 'gpu0' is not a torch device; use cpu, cuda, cuda:N or mps"
    check_device("cpu")


# ---- paths that do not exist -----------------------------------------------------------------------------------
@pytest.fixture()
def no_hub(monkeypatch):
    """Any attempt to load from a path (and so to ask a hub) fails the test."""
    import transformers

    def contacted(*args, **kwargs):
        raise AssertionError(f"from_pretrained{args} was called for a path that does not exist")

    for name in ("AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", contacted)


def test_missing_relative_model_path_fails_at_once(tmp_path, monkeypatch, no_hub):
    """``models/sft`` looks like a hub id; unless downloads are allowed it must fail before any hub is asked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(ModelLoadError) as info:
        TransformersLM.from_pretrained("models/sft")
    assert str(info.value) == ("model path 'models/sft' does not exist; give a local model directory (or"
                               " allow_download: true to fetch the hub id)")
    with pytest.raises(ModelLoadError, match="^model path 'models/rm' does not exist"):
        TransformersReward("models/rm")


def test_model_spec_checks_path_and_device_before_loading(tiny_paths, tmp_path, monkeypatch, no_hub):
    from tqstar.lm.spec import ModelSpec

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="^model path 'models/sft' does not exist"):
        ModelSpec("models/sft")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^device 'cuda:0' is not available"):
            ModelSpec(str(tiny_paths["sft"]), device="cuda:0")


# ---- options that reach the loaded models ------------------------------------------------------------------------
def test_parse_special_tokens_from_yaml_and_flag_reach_the_model(tiny_paths):
    from tqstar.cli import build_parser
    from tqstar.config import RunConfig, merge_flags

    sft, baseline = str(tiny_paths["sft"]), str(tiny_paths["baseline"])
    config = RunConfig.from_dict({"sft": {"path": sft, "parse_special_tokens": True}, "baseline": baseline})
    models = config.build(check=False).models
    assert models.sft.parse_special_tokens and not models.baseline.parse_special_tokens
    assert 2 in models.sft.encode_prompt("the cat </s>") and 2 not in models.baseline.encode_prompt("the cat </s>")
    args = build_parser().parse_args(["generate", "--sft", sft, "--parse-special-tokens", "--allow-download"])
    merged = RunConfig.from_dict(merge_flags({}, args))
    assert merged.sft.parse_special_tokens and merged.sft.allow_download
    assert not RunConfig.from_dict(merge_flags({}, build_parser().parse_args(["generate", "--sft", sft]))).sft.parse_special_tokens
