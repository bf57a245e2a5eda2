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


# ---- lexicon hygiene: a raw lexicon full of everyday words must not wreck captions ----------

EVERYDAY = ["一个", "女人", "帽子", "背景", "起来", "没有", "黄色"]


def test_everyday_words_of_a_raw_lexicon_are_not_masked_by_default():
    m = SensitiveMatcher(EVERYDAY + ["代开发票"])
    out, hits = m.apply("一个戴黄色帽子的女人站起来，背景里没有人 代开发票")
    assert hits == ["代开发票"]
    assert out == "一个戴黄色帽子的女人站起来，背景里没有人 ****"
    # Each exemption says why: its rank and count in jieba's frequency dictionary.
    assert set(m.exempted) == set(EVERYDAY)
    assert "rank 34" in m.exempted["一个"] and "jieba" in m.exempted["一个"]


def test_rare_words_stay_masked():
    # Below the rank cut in jieba's counts, or not in its dictionary at all.
    m = SensitiveMatcher(["卖淫", "六合彩", "代开发票", "习近平"])
    assert not m.exempted
    assert m.apply("卖淫 六合彩 代开发票 习近平")[1] == ["卖淫", "六合彩", "代开发票", "习近平"]


def test_strict_list_forces_everyday_words():
    m = SensitiveMatcher(EVERYDAY, strict=["黄色"])
    assert m.apply("黄色的帽子")[0] == "**的帽子"
    assert "黄色" not in m.exempted
    # A strict entry is matched even when the lexicon lacks it, and min_len does not drop it.
    assert SensitiveMatcher([], strict=["草"]).apply("草")[1] == ["草"]


def test_frequency_rule_can_be_switched_off():
    assert SensitiveMatcher(["帽子"], common_rank=None).apply("一顶帽子")[1] == ["帽子"]


def test_run_share_exemption():
    from filters.sensitive import measure_shares, share_exemptions

    m = SensitiveMatcher(["小男孩", "代开发票"])  # 小男孩 is rare in jieba's counts, common in captions
    caps = [f"小男孩在草地上跑 {i}" for i in range(60)] + ["代开发票"] + [f"蓝天白云 {i}" for i in range(939)]
    n, counts = measure_shares(m, caps)
    assert n == 1000 and counts["小男孩"] == 60 and counts["代开发票"] == 1
    ex = share_exemptions(counts, n, max_share=0.01)
    assert list(ex) == ["小男孩"] and ex["小男孩"] == (60, 0.06)
    m2 = SensitiveMatcher(["小男孩", "代开发票"], exempt=ex)
    assert m2.apply("小男孩 代开发票")[1] == ["代开发票"]
    assert "6.00% of" in m2.exempted["小男孩"]
    # Strict entries are never exempted; a few hits in a tiny run are not a share.
    assert share_exemptions(counts, n, 0.01, strict={"小男孩"}) == {}
    assert share_exemptions({"小男孩": 3}, 10, 0.01) == {}


# ---- placeholders of redacted PII are not sensitive words ---------------------------------

def test_placeholders_are_never_masked():
    # common_rank=None: 身份证 is also an everyday word, exempt by default anyway.
    m = SensitiveMatcher(["身份证", "银行卡", "手机号", "phone"], common_rank=None)
    text = "证件 <身份证号> 卡 <银行卡号> 电话 <手机号> call <PHONE>"
    assert m.apply(text) == (text, [])
    # A real word next to a placeholder is still matched.
    assert m.apply("身份证<身份证号>") == ("***<身份证号>", ["身份证"])


def _lexicon_file(tmp_path, words):
    p = tmp_path / "lex.txt"
    p.write_text("\n".join(words) + "\n", encoding="utf-8")
    return str(p)


def test_cleaner_pii_then_sensitive_keeps_placeholders(tmp_path):
    from filters.text import CaptionCleaner, TextConfig

    c = CaptionCleaner(TextConfig(sensitive_lexicon=_lexicon_file(tmp_path, ["身份证", "银行卡"]),
                                  sensitive_common_rank=None))
    r = c.clean("证件号11010519491231002X，卡4111111111111111")
    assert "<身份证号>" in r["caption"] and "<银行卡号>" in r["caption"] and "*" not in r["caption"]
    assert r["sensitive_words"] == [] and r["pii_id"] == 1 and r["pii_card"] == 1


def test_sensitive_then_pii_gives_the_same_caption(tmp_path):
    # The other order: words masked on the raw text first, PII redacted afterwards.
    from filters.pii import PiiRedactor

    m = SensitiveMatcher(["身份证", "银行卡"], common_rank=None)
    raw = "身份证11010519491231002X 银行卡4111111111111111"
    masked, hits = m.apply(raw)
    out, counts = PiiRedactor().redact(masked, lang="zh")
    assert hits == ["身份证", "银行卡"] and counts["id"] == 1 and counts["card"] == 1
    again, hits2 = m.apply(out)
    assert again == out and hits2 == [] and "<身份证号>" in out and "<银行卡号>" in out


def test_shipped_lexicon_is_strict():
    from filters.text import CaptionCleaner

    # 他妈的 is frequent in jieba's counts; the shipped list is curated, so it is still masked.
    assert CaptionCleaner().clean("他妈的 什么天气")["sensitive_words"] == ["他妈的"]


def test_cleaner_strict_from_config_and_file(tmp_path):
    from filters.text import CaptionCleaner, TextConfig

    lex = _lexicon_file(tmp_path, EVERYDAY)
    strict = tmp_path / "strict.txt"
    strict.write_text("女人\n", encoding="utf-8")
    c = CaptionCleaner(TextConfig(sensitive_lexicon=lex, sensitive_strict=("黄色",),
                                  sensitive_strict_file=str(strict)))
    r = c.clean("一个穿黄色衣服的女人")
    assert r["caption"] == "一个穿**衣服的**" and r["sensitive_words"] == ["黄色", "女人"]
    with pytest.raises(FileNotFoundError, match="missing"):
        CaptionCleaner(TextConfig(sensitive_lexicon=lex, sensitive_strict_file=str(tmp_path / "missing.txt")))


def test_audit_lists_what_the_defaults_exempt_and_why(tmp_path, capsys):
    lex = _lexicon_file(tmp_path, EVERYDAY + ["小男孩", "代开发票"])
    caps = tmp_path / "caps.txt"
    caps.write_text("\n".join(["一个小男孩站在石头上"] * 30 + ["代开发票"] + ["蓝天"] * 969), encoding="utf-8")
    assert audit_main(["lexicon-audit", lex, "--sample", str(caps)]) == 0
    out = capsys.readouterr().out
    assert "一个" in out and "rank 34" in out  # exempt by frequency
    assert "小男孩" in out and "3.00%" in out  # exempt by its share of the sample
    assert "hit: 1 " in out  # with the defaults only the real one remains
    assert audit_main(["lexicon-audit", lex, "--sample", str(caps), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_hit_captions"] == 1
    assert {e["word"] for e in rep["exempt_common"]} == set(EVERYDAY)
    assert [e["word"] for e in rep["exempt_share"]] == ["小男孩"]
    assert audit_main(["lexicon-audit", lex, "--sample", str(caps), "--common-rank", "0",
                       "--max-share", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_hit_captions"] == 31


def test_annotate_prepare_exempts_and_reports_words_common_in_the_run(tmp_path):
    """The global pass streams the run's captions, exempts entries above sensitive_max_share
    and writes the report to the run dir; workers then leave those entries alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import recipe_from_dict
    from pipeline.ingest import ingest
    from pipeline.registry import build_stage
    from pipeline.store import ColumnStore

    lex = _lexicon_file(tmp_path, ["小男孩", "代开发票", "一个"])
    caps = [f"小男孩在草地上跑 {i}" for i in range(50)] + ["一个人 代开发票"] + [f"蓝天白云 {i}" for i in range(949)]
    pq.write_table(pa.table({"url": [f"http://x/{i}" for i in range(len(caps))], "caption": caps}),
                   tmp_path / "urls.parquet")
    wd = tmp_path / "run"
    recipe = recipe_from_dict({"input": {"path": str(tmp_path / "urls.parquet")}, "workdir": str(wd),
                               "shard_size": 300, "stages": ["download", "annotate"],
                               "annotate": {"sensitive_lexicon": lex, "sensitive_max_share": 0.02}})
    ingest(recipe.input, wd, recipe.shard_size)
    stage = build_stage("annotate", recipe)
    state = stage.prepare(ColumnStore(wd, ["download", "annotate"]))
    report = json.loads((wd / "sensitive_exemptions.json").read_text(encoding="utf-8"))
    assert report["captions_measured"] == 1000
    assert [e["word"] for e in report["exempt_share"]] == ["小男孩"]
    assert report["exempt_share"][0]["captions"] == 50
    assert [e["word"] for e in report["exempt_common"]] == ["一个"]
    worker = build_stage("annotate", recipe)
    worker.setup(state)
    out = worker.cleaner.clean_batch(["小男孩在跑", "一个人 代开发票"])
    assert out["caption"] == ["小男孩在跑", "一个人 ****"]
    # A strict entry is never exempted, however common.
    recipe2 = recipe.model_copy(update={"annotate": recipe.annotate.model_copy(update={"sensitive_strict": ["小男孩"]})})
    s2 = build_stage("annotate", recipe2)
    assert s2.prepare(ColumnStore(wd, ["download", "annotate"]))["exempt"] == {}
    # The pass is bounded: at most sensitive_share_sample captions, spread over every shard.
    recipe3 = recipe.model_copy(update={"annotate": recipe.annotate.model_copy(update={"sensitive_share_sample": 40})})
    build_stage("annotate", recipe3).prepare(ColumnStore(wd, ["download", "annotate"]))
    assert json.loads((wd / "sensitive_exemptions.json").read_text(encoding="utf-8"))["captions_measured"] == 40


def test_lexicon_entries_are_normalised_like_captions():
    # An entry with Chinese punctuation matches the caption, which keeps its ，as written.
    from filters.text import normalize_text

    m = SensitiveMatcher(["代开发票，联系", "ＶＩＰ群"])
    assert m.apply(normalize_text("代开发票，联系我 ｖｉｐ群"))[1] == ["代开发票，联系", "vip群"]
