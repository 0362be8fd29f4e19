"""The public API is what `__all__` says, every name in it exists, and the list is pinned."""

import tqstar


def test_all_names_exist_and_are_sorted():
    assert all(hasattr(tqstar, name) for name in tqstar.__all__)
    assert list(tqstar.__all__) == sorted(tqstar.__all__)


def test_every_error_is_a_tqstar_error():
    for name in ("ConfigError", "ModelLoadError", "PromptTooLongError", "RewardError", "VocabularyMismatchError"):
        assert issubclass(getattr(tqstar, name), tqstar.TQStarError)


def test_errors_are_the_callers_or_the_servers():
    """Two branches: what the caller can fix (a server answers 4xx) and what failed in what tqstar runs (5xx)."""
    from tqstar import errors

    for error in (errors.ConfigError, errors.PromptTooLongError):
        assert issubclass(error, errors.ClientError) and not issubclass(error, errors.ServerError)
    for error in (errors.ModelLoadError, errors.VocabularyMismatchError, errors.RewardError, errors.ModelServerError,
                  errors.ServerRejectedError):
        assert issubclass(error, errors.ServerError) and not issubclass(error, errors.ClientError)
    exc = errors.ConfigError("`k` must be an integer >= 1, got 0", param="k", value=0)
    assert (str(exc), exc.param, exc.value) == ("`k` must be an integer >= 1, got 0", "k", 0)
    assert errors.ConfigError("no parameter").param is None


def test_the_public_names_are_pinned():
    """The API changes only on purpose: a name added to or removed from ``tqstar.__all__`` is added here too."""
    assert tqstar.__all__ == [
        "Accounting", "CallableReward", "ConfigError", "ContinuationScores", "DecodeParams", "Decoder", "Engine",
        "FullVocabLM", "LanguageModel", "METHODS", "ModelLoadError", "PromptState", "PromptTooLongError", "Response",
        "Reward", "RewardError", "RewardSpec", "RolloutOutput", "StepOutput", "TQStarError", "TabularLM",
        "TokenProgress", "TopLogprobs", "TransformersLM", "TransformersReward", "VocabularyMismatchError",
        "WeightedReward", "load_reward",
    ]


def test_the_command_is_the_cli_main():
    from importlib.metadata import entry_points

    from tqstar.cli import main

    assert callable(main)
    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name == "tqstar"}
    assert scripts.get("tqstar", "tqstar.cli:main") == "tqstar.cli:main"
