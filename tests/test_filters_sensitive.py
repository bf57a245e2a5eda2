import json

import pytest

from pipeline.cli import main as audit_main
from filters.sensitive import SensitiveMatcher, audit_lexicon


def test_mask_equal_length():
    m = SensitiveMatcher(["傻逼", "fuck"])
    out, hits = m.apply("你个傻逼 fuck off")
    assert out == "你个** **** off" and hits == ["傻逼", "fuck"]


def test_overlapping_words_mask_union():
    m = SensitiveMatcher(["坏蛋人", "蛋人渣"], zh_boundaries=False)
    out, hits = m.apply("他是坏蛋人渣啊")
    assert out == "他是****啊" and sorted(hits) == ["坏蛋人", "蛋人渣"]


def test_nested_words():
    # "fuck" inside "fucking" fails the English word boundary; the longer entry still matches.
    m = SensitiveMatcher(["fuck", "fucking"])
    assert m.apply("fucking rain") == ("******* rain", ["fucking"])
    m = SensitiveMatcher(["坏蛋", "大坏蛋"], zh_boundaries=False)
    out, hits = m.apply("大坏蛋来了")
    assert out == "***来了" and sorted(hits) == ["坏蛋", "大坏蛋"]


def test_zh_boundary_alignment():
    m = SensitiveMatcher(["马的"])
    assert m.apply("骑马的人")[1] == []
    assert SensitiveMatcher(["马的"], zh_boundaries=False).apply("骑马的人")[1] == ["马的"]


def test_en_word_boundaries():
    m = SensitiveMatcher(["ass"])
    assert m.apply("a class of students")[1] == []
    assert m.apply("what an ass!")[1] == ["ass"]


def test_case_insensitive_and_fullwidth_via_normalised_lexicon():
    m = SensitiveMatcher(["ＦＵＣＫ"])
    assert m.apply("Fuck this")[0] == "**** this"


def test_traditional_lexicon_matches_simplified_text():
    m = SensitiveMatcher(["賭博網站"])
    assert m.apply("某赌博网站广告")[1] == ["赌博网站"]


def test_min_len_and_allowlist():
    m = SensitiveMatcher(["马", "马的", "他妈的"], allowlist=["马的"])
    assert "马" not in m.words and "马的" not in m.words and m.dropped_short == ["马"]
    m2 = SensitiveMatcher(["马的"], allowlist=["骑马的"], zh_boundaries=False)
    assert m2.apply("骑马的人")[1] == []
    assert m2.apply("你马的")[1] == ["马的"]


@pytest.mark.parametrize("action", ["reject", "tag"])
def test_reject_and_tag_leave_text(action):
    m = SensitiveMatcher(["fuck"], action=action)
    assert m.apply("fuck it") == ("fuck it", ["fuck"])


def test_bad_action():
    with pytest.raises(ValueError, match="action"):
        SensitiveMatcher(["x"], action="delete")


def test_empty_inputs():
    m = SensitiveMatcher([])
    assert m.apply("anything") == ("anything", [])
    assert SensitiveMatcher(["傻逼"]).apply("") == ("", [])


def test_emoji_text_offsets():
    m = SensitiveMatcher(["shit"])
    assert m.apply("😀 shit 😀")[0] == "😀 **** 😀"


def test_large_lexicon_builds_and_matches():
    import random

    rng = random.Random(0)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    words = {"".join(rng.choice(chars) for _ in range(rng.randint(2, 4))) for _ in range(50_000)}
    m = SensitiveMatcher(words, zh_boundaries=False)
    w = sorted(words)[123]
    assert w in m.apply(f"前缀{w}后缀")[1]


def test_audit_report():
    rep = audit_lexicon(["马的", "fuck", "的人"], ["骑马的人", "fuck you", "好看的人", "蓝天"],
                        zh_boundaries=False, warn_rate=0.03)
    assert rep.n_captions == 4 and rep.n_hit_captions == 3 and rep.warn
    assert rep.top_words[0] == ("的人", 2)
    assert "WARNING" in rep.format()


def test_audit_cli_text_and_jsonl(tmp_path, capsys):
    lex = tmp_path / "lex.txt"
    lex.write_text("fuck\n# c\n的人\n", encoding="utf-8")
    caps = tmp_path / "caps.txt"
    caps.write_text("好看的人\nred car\nblue sky\n", encoding="utf-8")
    assert audit_main(["lexicon-audit", str(lex), "--sample", str(caps)]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "的人" in out
    js = tmp_path / "caps.jsonl"
    js.write_text("\n".join(json.dumps({"caption": c}) for c in ["fuck", "ok fine", "cat"]), encoding="utf-8")
    assert audit_main(["lexicon-audit", str(lex), "--sample", str(js), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_hit_captions"] == 1


def test_audit_cli_parquet_and_errors(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lex = tmp_path / "lex.txt"
    lex.write_text("fuck\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["fuck", "x y z"]}), tmp_path / "c.parquet")
    assert audit_main(["lexicon-audit", str(lex), "--sample", str(tmp_path / "c.parquet"),
                       "--column", "text"]) == 0
    assert audit_main(["lexicon-audit", str(lex), "--sample", str(tmp_path / "c.parquet")]) == 2
    assert "column" in capsys.readouterr().err
    assert audit_main(["lexicon-audit", str(tmp_path / "missing.txt"), "--sample",
                       str(tmp_path / "c.parquet")]) == 2
