import numpy as np
import pyarrow as pa
import pytest

from filters.dedup import dup_of, duplicated_by, exact_dup_of, pair_codes, factorize, phash_dup_of, phash_edges
from filters.hashing import caption_key, caption_keys, hamming, phash_to_uint64, popcount64, uint64_to_phash


def _brute(h, k):
    out = set()
    for i in range(len(h)):
        d = popcount64(h[i] ^ h[i + 1:])
        for j in np.flatnonzero(d <= k):
            out.add((i, i + 1 + int(j)))
    return out


def _flip(h, rng, nbits):
    pos = rng.choice(64, size=nbits, replace=False)
    for p in pos:
        h ^= np.uint64(1) << np.uint64(int(p))
    return h


def _planted(n, k, rng):
    h = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, size=n).astype(np.uint64)
    for i in range(0, n - 1, 7):
        h[i + 1] = _flip(h[i], rng, int(rng.integers(0, k + 3)))
    return np.unique(h)


@pytest.mark.parametrize("two_level", [False, True])
@pytest.mark.parametrize("k", [0, 1, 4, 6])
def test_phash_edges_match_brute_force(k, two_level):
    rng = np.random.default_rng(k)
    h = _planted(600, k, rng)
    a, b = phash_edges(h, k, two_level=two_level)
    got = {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist())}
    assert got == _brute(h, k)


def test_phash_edges_large_finds_all_planted():
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**63, size=50_000, dtype=np.int64).astype(np.uint64)
    near = np.array([_flip(x, rng, 4) for x in base[:2000]], dtype=np.uint64)
    h = np.concatenate([base, near])
    a, b = phash_edges(h, 4)  # two-level is chosen automatically here
    pairs = {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist())}
    for i in range(2000):
        assert (i, 50_000 + i) in pairs
    assert np.all(popcount64(h[a] ^ h[b]) <= 4)


def test_representative_largest_then_smallest_uid():
    uids = np.array([10, 11, 12, 13, 14])
    urls = ["a", "a", "a", "b", None]
    area = [100, 400, 400, 1, 1]
    rep = exact_dup_of(urls, uids, area)
    assert rep.tolist() == [11, 11, 11, 13, 14]
    # Row order does not matter.
    perm = [4, 2, 0, 3, 1]
    rep2 = exact_dup_of([urls[i] for i in perm], uids[perm], [area[i] for i in perm])
    assert dict(zip(uids[perm].tolist(), rep2.tolist())) == dict(zip(uids.tolist(), rep.tolist()))


def test_missing_keys_never_match():
    rep = exact_dup_of([None, None, "", "", "x"], np.arange(5))
    assert rep.tolist() == [0, 1, 2, 3, 4]


def test_union_of_rules_merges_groups():
    uids = np.arange(6)
    h = [0x0F0F0F0F0F0F0F0F, 0x0F0F0F0F0F0F0F0E, 0x123456789ABCDEF0, None, 0x0F0F0F0F0F0F0F0F, 0]
    hexes = [None if x is None else f"{x:016x}" for x in h]
    keys = {"url": ["u1", "u2", "u3", "u3", "u4", "u5"], "sha256": [None, None, None, None, None, None]}
    rep = dup_of(uids, area=[1, 1, 1, 5, 1, 1], keys=keys, phash=hexes, max_distance=2)
    # 0,1,4 near/identical pHash; 2,3 same URL (3 is larger); 5 alone.
    assert rep.tolist() == [0, 0, 3, 3, 0, 5]
    why = duplicated_by(uids, keys, phash=hexes, max_distance=2)
    assert why == ["dup_phash", "dup_phash", "dup_url", "dup_url", "dup_phash", None]


def test_caption_and_pair_keys():
    assert caption_key("  A Red-Car! ") == caption_key("a red car") == "aredcar"
    assert caption_key("") is None and caption_key("!!!") is None
    caps = factorize(caption_keys(["a cat", "A cat.", "dog", None]))
    shas = factorize(["s1", "s2", "s1", "s1"])
    pc = pair_codes(caps, shas)
    assert pc[0] != pc[1] and pc[3] == -1
    rep = dup_of(np.arange(4), keys={"caption": caps})
    assert rep.tolist() == [0, 0, 2, 3]


def test_pyarrow_and_uint64_inputs():
    uids = np.arange(3)
    rep = exact_dup_of(pa.array(["x", None, "x"]), uids)
    assert rep.tolist() == [0, 1, 0]
    h = np.array([5, 5, 7], dtype=np.uint64)
    assert phash_dup_of(h, uids, 0).tolist() == [0, 0, 2]
    assert phash_dup_of(h, uids, 1).tolist() == [0, 0, 0]
    assert phash_dup_of(h, uids, 1, valid=[True, True, False]).tolist() == [0, 0, 2]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unique"):
        dup_of([1, 1])
    with pytest.raises(ValueError, match="'url' has 1 rows"):
        dup_of([1, 2], keys={"url": ["a"]})


def test_hash_helpers():
    h, v = phash_to_uint64(["ffffffffffffffff", None, "zz", "0000000000000001"])
    assert v.tolist() == [True, False, False, True] and h[0] == np.uint64(2**64 - 1)
    assert uint64_to_phash(h[[3]]) == ["0000000000000001"]
    assert hamming(h[0], h[3]).item() == 63


def test_empty():
    assert dup_of(np.array([], dtype=np.int64), phash=np.array([], dtype=np.uint64)).tolist() == []


def _write_store(tmp_path, rows: list[dict]):
    """A real column store (input, download, annotate, score shards) holding `rows`."""
    import json

    import pyarrow.parquet as pq

    from filters.hashing import caption_key
    from filters.text import clean_captions
    from pipeline.store import ColumnStore

    n = len(rows)
    uid = pa.array(range(n), pa.int64())
    text = clean_captions([r["caption"] for r in rows])
    cols = {
        "input": {"url": [f"https://x.test/{i}.jpg" for i in range(n)], "caption": [r["caption"] for r in rows]},
        "download": {"download_ok": [True] * n, "download_reason": [None] * n},
        "annotate": {"decode_ok": [True] * n, "decode_error": [None] * n,
                     "width": [r.get("w", 640) for r in rows], "height": [r.get("h", 480) for r in rows],
                     "short_side": [min(r.get("w", 640), r.get("h", 480)) for r in rows],
                     "aspect_ratio": [max(r.get("w", 640), r.get("h", 480)) / min(r.get("w", 640), r.get("h", 480))
                                      for r in rows],
                     "sha256": [r["sha"] for r in rows],
                     "caption_key": [None if caption_key(c) is None else abs(hash(caption_key(c))) >> 1
                                     for c in text["caption"]],
                     "lang": text["text_lang"],
                     **{k: text[k] for k in ("text_chars", "text_uninformative", "text_is_filename",
                                             "text_hashtag_only", "text_words", "text_repetition",
                                             "sensitive_hits")}},
        "score": {"clip_score": [r.get("clip") for r in rows], "clip_error": [None] * n},
    }
    for src, c in cols.items():
        (tmp_path / src).mkdir()
        pq.write_table(pa.table({"uid": uid, **c}), tmp_path / src / "00000.parquet")
    (tmp_path / "input" / "meta.json").write_text(json.dumps({"n_shards": 1, "n_rows": n}))
    return ColumnStore(tmp_path, ["download", "annotate", "score", "dedup"])


def test_dedup_keeps_the_member_select_would_keep(tmp_path):
    """An image seen with a file-name caption (uid 0) and a good one (uid 1) keeps uid 1: the
    representative passes select's other rules first, then has the higher CLIP score, then the
    larger image, then the smaller uid."""
    from pipeline.config import Recipe
    from pipeline.stage import RunContext
    from stages.dedup import DedupConfig, DedupStage

    good = "a red car parked on a quiet street"
    rows = [dict(caption="IMG_1234.jpg", sha="a" * 64, clip=0.35),            # 0: file-name caption
            dict(caption=good, sha="a" * 64, clip=0.30),                      # 1: kept
            dict(caption=good + " at night", sha="b" * 64, clip=0.20, w=1200),  # 2
            dict(caption=good + " at noon", sha="b" * 64, clip=0.31, w=640),    # 3: higher score wins
            dict(caption=good + " in rain", sha="c" * 64, clip=None, w=1200),   # 4: unscored
            dict(caption=good + " in snow", sha="c" * 64, clip=None, w=800),    # 5
            dict(caption=good + " by a tree", sha="d" * 64, clip=0.3, w=600),   # 6
            dict(caption=good + " by a lake", sha="d" * 64, clip=0.3, w=600)]   # 7: tie: smaller uid
    store = _write_store(tmp_path, rows)
    recipe = Recipe(input={"path": str(tmp_path / "urls.parquet")}, workdir=str(tmp_path),
                    stages=["download", "annotate", "score", "dedup", "select"])
    stage = DedupStage(DedupConfig(semantic_threshold=None), RunContext(str(tmp_path), recipe))
    stage.setup(stage.prepare(store))
    out = stage.process(store.read(0, []))
    assert out.column("dup_of").to_pylist() == [1, 1, 3, 3, 4, 4, 6, 6]
    assert out.column("dup_reason").to_pylist() == ["dup_sha256", None, "dup_sha256", None, None,
                                                    "dup_sha256", None, "dup_sha256"]
