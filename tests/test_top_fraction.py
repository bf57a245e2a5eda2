"""keep_top_fraction cutoffs: exact per language, streamed over shards, against a full sort."""
import numpy as np
import pyarrow as pa
import pytest

from filters.top_fraction import top_fraction_cutoffs


def _sorted_cutoffs(scores, langs, uids, frac):
    out = {}
    for lang in sorted(set(langs)):
        f = frac.get(lang)
        m = np.array([l == lang for l in langs]) & ~np.isnan(scores)
        if f is None or not m.any():
            continue
        s, u = scores[m], uids[m]
        o = np.lexsort((u, -s))  # score descending, then uid
        last = o[int(np.ceil(f * m.sum())) - 1]
        out[lang] = (float(s[last]), int(u[last]))
    return out


@pytest.mark.parametrize("limit", [3, 1000, 1 << 20])
def test_exact_per_language_against_a_sort(limit):
    rng = np.random.default_rng(limit)
    n = 20_000
    # Many ties (scores on a 1/200 grid), negative scores, NaN (unscored), uids out of order.
    scores = np.round(rng.normal(0.2, 0.15, n) * 200) / 200
    scores[rng.random(n) < 0.05] = np.nan
    scores[:500] = 0.25  # one long tie: the cutoff falls inside it, broken by uid
    langs = rng.choice(["en", "zh", "*"], n, p=[0.6, 0.3, 0.1])
    uids = rng.permutation(n * 3)[:n].astype(np.int64)
    frac = {"en": 0.3, "zh": 0.77, "*": 1.0}
    shards = np.array_split(np.arange(n), 7)

    def batches():
        for s in shards:
            yield scores[s], pa.array([None if l == "*" else l for l in langs[s]]), uids[s]

    got = top_fraction_cutoffs(batches, frac.get, limit=limit)
    assert got == _sorted_cutoffs(scores, list(langs), uids, frac)
    # The cutoff keeps exactly ceil(f * n) rows of each language.
    for lang, (s, u) in got.items():
        m = (langs == lang) & ~np.isnan(scores)
        kept = ((scores[m] > s) | ((scores[m] == s) & (uids[m] <= u))).sum()
        assert kept == int(np.ceil(frac[lang] * m.sum()))


def test_languages_without_a_fraction_and_all_tied():
    scores = np.full(10, 0.5)
    got = top_fraction_cutoffs(lambda: iter([(scores, pa.array(["en"] * 5 + ["zh"] * 5), np.arange(10))]),
                               {"en": 0.4}.get, limit=1)
    assert got == {"en": (0.5, 1)}
