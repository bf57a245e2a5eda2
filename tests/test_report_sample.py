"""A large run's report loads a bounded sample of rows, yet its counts are exact and its
thumbnails are the ones a full load picks."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report import _decision_counts, _sample_uids, build_report, load_run

N, SHARD = 6000, 1000
REASONS = ["small_image", "http_404", "truncated", "rare_reason"]


def _run(tmp_path, manifest: bool):
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    (run / "input").mkdir(parents=True)
    (run / "recipe.json").write_text(json.dumps({"stages": ["download", "annotate", "select"]}))
    for s in range(N // SHARD):
        uid = np.arange(s * SHARD, (s + 1) * SHARD)
        r = rng.random(SHARD)
        decision = np.where(r < 0.5, "kept", np.where(r < 0.9, "rejected", "failed"))
        reason = [None if d == "kept" else REASONS[int(x * 97) % 3] for d, x in zip(decision, r)]
        if s == 4:
            reason[17], decision[17] = "rare_reason", "rejected"  # one row of a reason deep in the run
        cols = {
            "input": {"url": [f"http://h/{u}" for u in uid], "caption": [f"caption {u}" for u in uid]},
            "download": {"download_ok": decision != "failed"},
            "annotate": {"decode_ok": r < 0.85, "aspect_ratio": 1 + r},
            "select": {"decision": decision.tolist(), "reason": reason},
        }
        if manifest:
            t = pa.table({"uid": uid, **{k: v for c in cols.values() for k, v in c.items()},
                          "exported": decision == "kept"})
            (run / "export" / "manifest").mkdir(parents=True, exist_ok=True)
            pq.write_table(t, run / "export" / "manifest" / f"part-{5 - s}.parquet")  # not in uid order
        for stage, c in cols.items():
            (run / stage).mkdir(exist_ok=True)
            pq.write_table(pa.table({"uid": uid, **c}), run / stage / f"{s:05d}.parquet")
    return run


@pytest.mark.parametrize("manifest", [False, True])
def test_sampled_load_keeps_counts_and_first_rows_per_reason(tmp_path, manifest):
    run = _run(tmp_path, manifest)
    full = load_run(run, per_reason=3, max_rows=10**9)
    part = load_run(run, per_reason=3, max_rows=600)
    assert full.rows.num_rows == N and full.n_rows == N
    assert part.n_rows == N and part.rows.num_rows < 900  # ~600 sampled + the first rows of 5 groups
    assert _decision_counts(part) == (_decision_counts(full)[0], "every row")
    assert _decision_counts(part)[0]["rejected"]["rare_reason"] == 1
    for c in ("download_ok", "decode_ok", *(("exported",) if manifest else ())):
        assert part.count_true(c) == full.count_true(c)
    if not manifest:  # the manifest is not in uid order: "first" differs, the groups do not
        assert _sample_uids(part, 3) == _sample_uids(full, 3)
    assert [g[:2] for g in _sample_uids(part, 3)] == [g[:2] for g in _sample_uids(full, 3)]
    # The sample spreads over the whole run (uniform by uid hash), not its first shard.
    uids = np.asarray(part.rows.column("uid"))
    assert np.histogram(uids, bins=6, range=(0, N))[0].min() > 60


def test_report_of_a_sampled_run_renders_exact_counts(tmp_path, monkeypatch):
    import pipeline.report_sample as rs

    run = _run(tmp_path, manifest=False)
    monkeypatch.setattr(rs, "MAX_ROWS", 600)
    monkeypatch.setattr("pipeline.report.MAX_ROWS", 600)
    html = build_report(run, out=tmp_path / "r" / "index.html", samples_per_reason=2).read_text(encoding="utf-8")
    assert f"{N} rows from stage outputs" in html and "of the run&#x27;s 6,000 rows" in html
    full = _decision_counts(load_run(run, max_rows=10**9))[0]
    for reason, n in full["rejected"].items():
        assert f"<td>rejected</td><td>{reason}</td><td>{n}</td>" in html
    assert "rejected: rare_reason</h3>" in html
