"""filters/dedup/buckets.py: which buckets a row joins, exact and through the two-level index
used above EXACT_ASSIGN_MAX centroids."""
import numpy as np
import pytest

from filters.dedup import buckets
from filters.dedup.buckets import BucketIndex, assign, build_index, kmeans, train_index


def _brute(x, c, probes, ratio):
    d = np.sqrt(((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1))
    o = np.argsort(d, 1)[:, :probes]
    near = np.take_along_axis(d, o, 1)
    o[near > ratio * near[:, :1]] = -1
    return o


def _clustered(rng, n, k, d=64, spread=0.3):
    centres = 3 * rng.normal(size=(k, d)).astype(np.float32)
    return (centres[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("ratio", [float("inf"), 1.1])
def test_exact_assignment_is_the_brute_force_one(ratio):
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(3000, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    idx = build_index(c)
    assert idx.coarse is None
    assert np.array_equal(assign(x, idx, 4, False, ratio), _brute(x, c, 4, ratio))
    assert assign(x, idx, 99, False).shape == (3000, 50)  # probes beyond k: every bucket once


def test_two_level_probing_every_cell_is_exact():
    rng = np.random.default_rng(1)
    c = _clustered(rng, 400, 40, d=16)
    x = _clustered(rng, 2000, 40, d=16)
    idx = build_index(c, exact_max=100, coarse_probes=100)
    assert idx.coarse is not None and len(idx.coarse) == 20 and set(idx.cell_of) <= set(range(20))
    for ratio in (float("inf"), 1.1):
        assert np.array_equal(assign(x, idx, 4, False, ratio), assign(x, BucketIndex(c), 4, False, ratio))


def test_two_level_keeps_near_copies_together_and_finds_the_nearest_bucket():
    rng = np.random.default_rng(2)
    data = _clustered(rng, 60_000, 300, spread=1.0)
    c = kmeans(data[:50_000], 1000, False)  # centroids as the stage makes them
    x = data[50_000:]
    copy = x + 0.05 * rng.normal(size=x.shape).astype(np.float32)
    idx = build_index(c, exact_max=500)
    assert idx.coarse is not None and idx.coarse_probes == buckets.COARSE_PROBES
    exact = assign(x, BucketIndex(c), 4, False, 1.1)
    two = assign(x, idx, 4, False, 1.1)
    assert np.mean(two[:, 0] == exact[:, 0]) > 0.97
    two_copy = assign(copy, idx, 4, False, 1.1)
    shares = [bool(set(a[a >= 0]) & set(b[b >= 0])) for a, b in zip(two, two_copy)]
    assert np.mean(shares) > 0.995
    assert (two[:, 0] >= 0).all() and ((two == -1) | (two < len(c))).all()
    for row in two:  # no bucket twice, nearest first
        kept = row[row >= 0]
        assert len(set(kept)) == len(kept)


def test_spherical_rows_are_compared_by_direction():
    rng = np.random.default_rng(3)
    c = rng.normal(size=(30, 8)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    a = assign(x, BucketIndex(c), 2, True)
    assert np.array_equal(a, assign(x * 7.5, BucketIndex(c), 2, True))
    assert np.array_equal(a, _brute(x / np.linalg.norm(x, axis=1, keepdims=True), c, 2, float("inf")))


def test_hierarchical_training_gives_a_two_level_index_of_about_k_buckets():
    rng = np.random.default_rng(4)
    data = _clustered(rng, 80_000, 300, spread=1.0)
    flat = train_index(data[:60_000], 200, False)
    assert flat.coarse is None and flat.k == 200
    idx = train_index(data[:60_000], 900, False, exact_max=500)
    assert idx.coarse is not None and len(idx.coarse) == 30
    assert abs(idx.k - 900) <= 30 and len(idx.cell_of) == idx.k and set(idx.cell_of) <= set(range(30))
    x = data[60_000:]
    copy = x + 0.05 * rng.normal(size=x.shape).astype(np.float32)
    two = assign(x, idx, 4, False, 1.1)
    exact = assign(x, BucketIndex(idx.centroids), 4, False, 1.1)
    assert np.mean(two[:, 0] == exact[:, 0]) > 0.97
    shares = [bool(set(a[a >= 0]) & set(b[b >= 0])) for a, b in zip(two, assign(copy, idx, 4, False, 1.1))]
    assert np.mean(shares) > 0.995
    # The buckets are balanced like flat k-means': no bucket holds a large share of the rows.
    assert np.bincount(two[:, 0], minlength=idx.k).max() < 20 * len(x) / idx.k
