import numpy as np
import pytest

from vidprior.models.spec import HashingSpec, TextEmbedderSpec
from vidprior.unic.dedup import greedy_dedup, greedy_dedup_bruteforce, pairs_at_or_above
from vidprior.unic.synthetic import synthetic_prompts


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def prompt_embeddings():
    from vidprior.models import build_text_embedder

    texts = synthetic_prompts(3000, seed=7, near_duplicate_fraction=0.3)["prompt"].tolist()
    embedder = build_text_embedder(TextEmbedderSpec(hashing=HashingSpec()))
    return embedder.embed(texts)


@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.6])
def test_no_kept_pair_reaches_the_threshold_brute_force(prompt_embeddings, threshold):
    result = greedy_dedup(prompt_embeddings, threshold, block_size=500)
    assert 0 < result.n_kept < len(prompt_embeddings)  # the data really has duplicates to remove
    assert pairs_at_or_above(prompt_embeddings[result.kept], threshold) == 0
    sims = prompt_embeddings[result.kept] @ prompt_embeddings[result.kept].T
    np.fill_diagonal(sims, -1)
    assert sims.max() < threshold


def test_every_dropped_item_points_at_an_earlier_kept_item_at_or_above_threshold(prompt_embeddings):
    threshold = 0.8
    result = greedy_dedup(prompt_embeddings, threshold, block_size=256)
    dropped = np.flatnonzero(~result.kept)
    of = result.duplicate_of[dropped]
    assert (of < dropped).all() and result.kept[of].all()
    recomputed = np.einsum("ij,ij->i", prompt_embeddings[dropped], prompt_embeddings[of])
    assert (recomputed >= threshold - 1e-5).all()
    np.testing.assert_allclose(result.similarity[dropped], recomputed, atol=1e-5)
    # the reported original is the most similar kept item before it
    kept_idx = np.flatnonzero(result.kept)
    for i in dropped[:50]:
        earlier = kept_idx[kept_idx < i]
        assert result.duplicate_of[i] == earlier[np.argmax(prompt_embeddings[earlier] @ prompt_embeddings[i])]


def test_greedy_is_keep_first_and_independent_of_block_size(prompt_embeddings):
    a = greedy_dedup(prompt_embeddings, 0.8, block_size=64).kept
    b = greedy_dedup(prompt_embeddings, 0.8, block_size=4096).kept
    c = greedy_dedup_bruteforce(prompt_embeddings, 0.8, block_size=333)
    assert (a == b).all() and (a == c).all()


def test_small_hand_made_case():
    # 0 and 1 are near-identical, 2 is orthogonal, 3 duplicates 2 (not 0): keep 0 and 2.
    x = _unit(np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0], [0.05, 1, 0]], dtype=np.float32))
    result = greedy_dedup(x, 0.8)
    assert result.kept.tolist() == [True, False, True, False]
    assert result.duplicate_of.tolist() == [-1, 0, -1, 2]


def test_similarity_exactly_at_threshold_counts_as_duplicate():
    angle = np.arccos(0.8)
    x = np.array([[1.0, 0.0], [np.cos(angle), np.sin(angle)]], dtype=np.float32)
    assert greedy_dedup(x, float(x[0] @ x[1])).kept.tolist() == [True, False]


def test_chain_keeps_third_when_only_the_dropped_middle_is_close():
    # a~b and b~c but a !~ c: greedy keep-first keeps a and c (b is gone, it cannot shadow c).
    angles = np.radians([0, 30, 60])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    assert greedy_dedup(x, 0.8).kept.tolist() == [True, False, True]


def test_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"expected a 2-D array"):
        greedy_dedup(np.zeros(5, dtype=np.float32), 0.8)
