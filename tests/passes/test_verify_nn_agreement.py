"""nn_agreement: the share of items whose nearest other item (by cosine) stays the same."""

import numpy as np
import pytest

from presso.passes.verify import nn_agreement


def test_identical_and_rescaled_embeddings_agree_fully():
    x = np.random.default_rng(0).standard_normal((50, 16))
    assert nn_agreement(x, x) == 1.0
    # cosine ignores each row's length
    assert nn_agreement(x, x * np.random.default_rng(1).uniform(0.1, 10, (50, 1))) == 1.0


def test_counts_the_items_whose_neighbour_changed():
    # three tight pairs: (0, 1), (2, 3), (4, 5); the candidate moves item 3 right next to item 0
    ref = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99], [-1.0, 0.0], [-0.99, -0.1]])
    cand = ref.copy()
    cand[3] = [0.999, 0.01]
    # nearest under cand: 0→3, 1→3, 2→1, 3→0 (all four changed), 4→5, 5→4 (kept)
    assert nn_agreement(ref, cand) == pytest.approx(2 / 6)


def test_noise_lowers_agreement_monotonically_on_average():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 32))
    small = nn_agreement(x, x + 0.05 * rng.standard_normal(x.shape))
    large = nn_agreement(x, x + 1.0 * rng.standard_normal(x.shape))
    assert 1.0 >= small > large >= 0.0


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nn_agreement(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        nn_agreement(np.zeros((1, 3)), np.zeros((1, 3)))
