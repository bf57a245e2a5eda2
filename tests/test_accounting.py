"""The accounting check counts distinct uids one select shard at a time; a uid that turns up in
two shards must still be caught."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.accounting import AccountingError, check_and_record


def _select(wd, shards):
    (wd / "select").mkdir(parents=True, exist_ok=True)
    for i, uids in enumerate(shards):
        n = len(uids)
        pq.write_table(pa.table({"uid": pa.array(uids, pa.int64()), "decision": ["kept"] * (n - 1) + ["rejected"],
                                 "reason": [None] * (n - 1) + ["small_image"]}), wd / "select" / f"{i:05d}.parquet")


def test_balanced_run(tmp_path):
    _select(tmp_path, [list(range(0, 10)), list(range(10, 20)), list(range(20, 25))])
    s = check_and_record(tmp_path, 25)
    assert s["balanced"] and s["rows"] == s["distinct_uids"] == 25 and s["rejected_by_reason"] == {"small_image": 3}


@pytest.mark.parametrize("shards", [
    [list(range(0, 10)), [3, *range(11, 20)], list(range(20, 25))],   # a uid of shard 0 in shard 1, 10 lost
    [list(range(0, 10)), list(range(10, 20)), [*range(20, 24), 24, 24][1:]],  # duplicated within a shard
    [list(range(0, 10)), [*range(10, 19), 30], list(range(20, 25))],  # out of range, 19 lost
])
def test_lost_or_duplicated_uids_are_caught(tmp_path, shards):
    _select(tmp_path, shards)
    with pytest.raises(AccountingError, match="lost or duplicated"):
        check_and_record(tmp_path, 25)
