"""Metrics on hand-made examples."""

from __future__ import annotations

import math

import pytest

from tqstar.eval.metrics import diversity, mean_and_stderr, normalised_reward, rep_n, win_tie


def test_mean_and_stderr():
    assert mean_and_stderr([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0 / math.sqrt(3)))
    assert mean_and_stderr([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_and_stderr([]))


def test_normalised_reward():
    assert normalised_reward(0.5, r_min=0.0, r_ref=1.0) == 0.5
    assert normalised_reward(1.5, r_min=0.5, r_ref=1.0) == 2.0  # better than the reference: > 1
    assert normalised_reward(0.2, r_min=0.2, r_ref=0.8) == 0.0
    assert math.isnan(normalised_reward(0.3, r_min=0.3, r_ref=0.3))


def test_win_tie():
    result = win_tie([1.0, 0.5, 0.2, 0.9], [0.5, 0.5, 0.7, 0.1])
    assert result == {"win": 0.5, "tie": 0.25, "lose": 0.25, "win_tie": 0.75}
    with pytest.raises(ValueError, match="paired"):
        win_tie([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("a b c d", 2, 0.0),  # 3 bigrams, all unique
        ("a b a b a b", 2, 1 - 2 / 5),  # bigrams: ab ba ab ba ab -> 2 unique of 5
        ("a a a a", 3, 1 - 1 / 2),
        ("one", 2, 0.0),  # no bigram at all
    ],
)
def test_rep_n(text, n, expected):
    assert rep_n(text, n) == pytest.approx(expected)


def test_diversity():
    assert diversity("the cat sat on the mat") == pytest.approx(1.0)
    # 8 x "go": 1 unique of 7 bigrams, of 6 trigrams, of 5 four-grams
    assert diversity("go go go go go go go go") == pytest.approx((1 / 7) * (1 / 6) * (1 / 5))
    # "a b a b a b": rep-2 = 3/5, rep-3 = 1 - 2/4, rep-4 = 1 - 2/3
    assert diversity("a b a b a b") == pytest.approx((2 / 5) * (2 / 4) * (2 / 3))


def test_coherence_on_minilm():
    from tqstar.builtin.models import minilm_dir
    from tqstar.errors import ModelLoadError
    from tqstar.eval.metrics import Coherence

    try:
        minilm_dir()
    except ModelLoadError as exc:
        pytest.skip(str(exc))

    c = Coherence()
    related, unrelated, empty = c(["How do I make a cup of tea?"] * 3,
                                  ["Steep the tea leaves in hot water.", "The stock market fell today.", ""])
    assert related > 0.5 > unrelated and empty == 0.0
