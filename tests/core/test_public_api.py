"""The public API is what `__all__` says, and every name in it exists."""

import tqstar


def test_all_names_exist_and_are_sorted():
    assert all(hasattr(tqstar, name) for name in tqstar.__all__)
    assert list(tqstar.__all__) == sorted(tqstar.__all__)


def test_every_error_is_a_tqstar_error():
    for name in ("ConfigError", "ModelLoadError", "PromptTooLongError", "RewardError", "VocabularyMismatchError"):
        assert issubclass(getattr(tqstar, name), tqstar.TQStarError)
