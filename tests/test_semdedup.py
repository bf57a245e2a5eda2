"""Semantic dedup: planted near-duplicates found, representatives deterministic."""
import numpy as np
import pytest

from filters.semdedup import semantic_dup_of


def _planted(n_base: int, n_dup: int, d: int = 64, cos: float = 0.97, seed: int = 0):
    """Random unit vectors plus near-copies of some of them at cosine ~`cos`."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, d)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    src = rng.choice(n_base, n_dup, replace=False)
    noise = rng.standard_normal((n_dup, d)).astype(np.float32)
    noise -= (noise * base[src]).sum(1, keepdims=True) * base[src]  # orthogonal to source
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    dup = cos * base[src] + np.sqrt(1 - cos**2) * noise
    return np.concatenate([base, dup]), src


@pytest.mark.parametrize("index", ["flat", "ivf", "clustered"])
def test_finds_planted_duplicates(index):
    emb, src = _planted(3000, 200)
    uids = np.arange(len(emb), dtype=np.int64) + 1000
    rep = semantic_dup_of(emb, uids, threshold=0.94, index=index, nprobe=8)
    dup_rows = np.arange(3000, 3200)
    assert np.all(rep[dup_rows] == uids[src])     # source has the smaller uid
    assert np.all(rep[src] == uids[src])
    others = np.setdiff1d(np.arange(3000), src)
    assert np.all(rep[others] == uids[others])    # random vectors match nothing


def test_threshold_is_inclusive_and_strict_below():
    e = np.array([[1.0, 0.0], [0.95, np.sqrt(1 - 0.95**2)]], np.float32)
    assert list(semantic_dup_of(e, np.array([5, 7]), threshold=0.949)) == [5, 5]
    assert list(semantic_dup_of(e, np.array([5, 7]), threshold=0.951)) == [5, 7]


def test_representative_independent_of_row_order():
    emb, _ = _planted(500, 60, seed=1)
    uids = np.arange(len(emb), dtype=np.int64)
    prio = np.random.default_rng(2).random(len(emb))
    rep = semantic_dup_of(emb, uids, priority=prio)
    perm = np.random.default_rng(3).permutation(len(emb))
    rep_p = semantic_dup_of(emb[perm], uids[perm], priority=prio[perm])
    assert np.array_equal(rep_p, rep[perm])
    # Within a group the representative has the highest priority.
    for r in np.unique(rep):
        members = np.flatnonzero(rep == r)
        assert prio[r] == prio[members].max()


def test_priority_ties_and_nan_fall_back_to_smallest_uid():
    e = np.tile(np.array([[0.6, 0.8]], np.float32), (4, 1))
    uids = np.array([40, 10, 30, 20])
    assert set(semantic_dup_of(e, uids, priority=np.array([1.0, 0.5, 1.0, np.nan]))) == {30}
    assert set(semantic_dup_of(e, uids)) == {10}


def test_groups_are_stars_not_chains_and_groups_separate():
    a = np.array([1.0, 0.0, 0.0], np.float32)
    b = np.array([0.96, 0.28, 0.0], np.float32)      # cos(a, b) = 0.96
    c = np.array([0.8432, 0.5376, 0.0], np.float32)  # cos(b, c) ~ 0.96, cos(a, c) ~ 0.84
    e = np.stack([a, b, c])
    # a is kept and takes b; c resembles nothing that is kept, so it stays (no chain a~b~c).
    assert list(semantic_dup_of(e, np.array([1, 2, 3]))) == [1, 1, 3]
    for index in ("flat", "ivf", "clustered"):
        assert list(semantic_dup_of(e, np.array([1, 2, 3]), index=index, nlist=1)) == [1, 1, 3]
    # b best (by priority): b is the centre of a star holding both a and c.
    assert list(semantic_dup_of(e, np.array([1, 2, 3]), priority=np.array([0.1, 0.9, 0.2]))) == [2, 2, 2]
    same = np.stack([a, a, a])
    assert list(semantic_dup_of(same, np.array([1, 2, 3]), groups=np.array(["en", "zh", "en"]))) == [1, 2, 1]


def test_bucket_pairs_match_brute_force():
    from filters.dedup.semantic import semantic_bucket_pairs

    emb, _ = _planted(400, 60, seed=4)
    uids = np.random.default_rng(0).permutation(len(emb)) * 3
    a, b = semantic_bucket_pairs(uids, emb, 0.94, chunk=64)
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    i, j = np.nonzero(np.triu(x @ x.T >= 0.94, 1))
    want = {tuple(sorted(p)) for p in zip(uids[i].tolist(), uids[j].tolist())}
    assert {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist())} == want and len(want) >= 60


def test_bad_rows_match_nothing_and_bad_input_is_named():
    e = np.array([[1, 0], [np.nan, 0], [0, 0], [1, 0]], np.float32)
    assert list(semantic_dup_of(e, np.array([1, 2, 3, 4]))) == [1, 2, 3, 1]
    with pytest.raises(ValueError, match="unique"):
        semantic_dup_of(e, np.array([1, 1, 2, 3]))
    with pytest.raises(ValueError, match="N == len"):
        semantic_dup_of(e, np.array([1, 2]))
    assert len(semantic_dup_of(np.zeros((0, 8)), np.zeros(0, np.int64))) == 0


def test_fp16_input_accepted():
    emb, src = _planted(300, 20)
    rep = semantic_dup_of(emb.astype(np.float16), np.arange(320))
    assert np.all(rep[300:] == src)
