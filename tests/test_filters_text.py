import pytest

from filters.language import detect_language, words
from filters.text import (
    TEXT_COLUMNS, CaptionCleaner, TextConfig, TextThresholds, caption_reason, caption_reasons,
    clean_caption, clean_captions, is_filename, is_hashtag_only, normalize_text,
)


def test_nfkc_fullwidth_digits_and_letters():
    assert normalize_text("ＡＢＣ１２３　ｈｅｌｌｏ") == "ABC123 hello"


def test_whitespace_and_control_chars():
    assert normalize_text("  a\tb\n\n c\x00d\u200be\ufeff  ") == "a b cde"


def test_zwj_emoji_kept():
    fam = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    r = clean_caption(f"family {fam} at the beach today")
    assert fam in r["caption"]
    assert r["text_words"] == 5  # the emoji is not a word


def test_html_entities_and_tags():
    assert normalize_text("Tom &amp;amp; Jerry<br/>&quot;cartoon&quot;") == 'Tom & Jerry "cartoon"'


def test_traditional_to_simplified():
    r = clean_caption("這是一張美麗的風景照片")
    assert r["caption"] == "这是一张美丽的风景照片" and r["text_t2s_chars"] == 4


def test_japanese_not_converted_and_other_language():
    r = clean_caption("東京タワーの夜景")
    assert r["caption"] == "東京タワーの夜景" and r["text_lang"] == "other"


@pytest.mark.parametrize("raw", ["查看原网页", "点击查看大图 ", "Click to enlarge", " 展开全文 >> "])
def test_boilerplate_only_is_uninformative(raw):
    r = clean_caption(raw)
    assert r["text_uninformative"] and r["caption"] == ""
    assert caption_reason(r) in {"empty_caption", "uninformative_caption"}


def test_boilerplate_embedded_is_removed():
    r = clean_caption("海边的日落美景 - 查看原网页")
    assert r["caption"] == "海边的日落美景" and r["text_boilerplate_removed"] == 1
    assert not r["text_uninformative"] and caption_reason(r) is None
    r = clean_caption("Click here to see a red car parked outside")
    assert r["caption"] == "to see a red car parked outside"


def test_generic_words_only_flag_whole_caption():
    assert clean_caption("image")["text_uninformative"]
    assert clean_caption("图片")["text_uninformative"]
    r = clean_caption("an image of a cat on a mat")
    assert r["caption"] == "an image of a cat on a mat" and not r["text_uninformative"]


def test_boilerplate_respects_word_boundaries():
    r = clean_caption("clickhere is a brand of red shoes")
    assert r["caption"].startswith("clickhere")


@pytest.mark.parametrize("name", ["IMG_2031.jpg", "DSC0012.JPG", "1234567.png", "IMG_2031",
                                  "PXL_20230101_123456789", "DSCN0042", "20230517",
                                  "3f2b9c0d1e4a5b6c7d8e", "my holiday photo.jpeg"])
def test_filenames(name):
    assert is_filename(name)
    assert caption_reason(clean_caption(name)) is not None


@pytest.mark.parametrize("text", ["a dog on the grass", "iPhone 15 Pro", "2024年春节"])
def test_not_filenames(text):
    assert not is_filename(text)


def test_hashtags():
    assert is_hashtag_only("#travel #sunset #nofilter")
    assert is_hashtag_only("#旅行# #风景#")
    assert not is_hashtag_only("sunset at the beach #travel")
    assert caption_reason(clean_caption("#travel #sunset #beach")) == "hashtag_only_caption"


@pytest.mark.parametrize("text,lang", [
    ("a red car parked on the street", "en"),
    ("一只猫坐在沙发上", "zh"),
    ("华为Mate60Pro手机", "zh"),
    ("我爱Python编程", "zh"),
    ("beautiful sunset at the beach 日落", "en"),
    ("서울의 야경", "other"),
    ("Привет мир", "other"),
    ("12345 !!!", "other"),
    ("", "other"),
])
def test_language(text, lang):
    assert detect_language(text) == lang


def test_word_counts_zh_and_en():
    r = clean_caption("一只可爱的小猫坐在红色的沙发上")
    assert r["text_lang"] == "zh" and r["text_words"] == len(words(r["caption"])) >= 6
    assert r["text_zh_chars"] == 15
    r = clean_caption("a cat on a red sofa")
    assert r["text_words"] == 6 and r["text_chars"] == 19 and r["text_zh_chars"] == 0


def test_mixed_zh_en_words():
    r = clean_caption("我的iPhone 15很好用")
    assert r["text_lang"] == "zh" and "iPhone" in words(r["caption"])


def test_datacomp_english_defaults():
    assert caption_reason(clean_caption("red car")) == "too_few_words"
    assert caption_reason(clean_caption("a b c")) == "too_few_chars"
    assert caption_reason(clean_caption("a red car")) is None


def test_chinese_word_range_configurable():
    r = clean_caption("猫")
    assert caption_reason(r) is None
    assert caption_reason(r, TextThresholds(min_zh_words=2)) == "too_few_words"
    long = clean_caption("一只猫" * 60)
    assert caption_reason(long, TextThresholds(max_zh_words=50, max_repetition=1.0)) == "too_many_words"


def test_repetition():
    assert clean_caption("哈哈哈哈哈哈哈哈哈哈")["text_repetition"] > 0.6
    assert clean_caption("buy now buy now buy now buy now")["text_repetition"] > 0.6
    assert clean_caption("一只可爱的小猫坐在红色的沙发上看着窗外")["text_repetition"] < 0.3
    assert caption_reason(clean_caption("buy now buy now buy now buy now")) == "repetitive_caption"


@pytest.mark.parametrize("raw", ["", "   ", "\t\n", None, "\u200b\u200b"])
def test_empty_and_whitespace(raw):
    r = clean_caption(raw)
    assert r["caption"] == "" and r["text_chars"] == 0 and caption_reason(r) == "empty_caption"


def test_non_utf8_bytes_recorded():
    r = clean_caption(b"caf\xe9 au lait in paris")
    assert r["text_decode_replaced"] and "\ufffd" in r["caption"]
    r = clean_caption("咖啡馆".encode())
    assert not r["text_decode_replaced"] and r["caption"] == "咖啡馆"


def test_emoji_only_is_not_language():
    r = clean_caption("😀😀🎉")
    assert r["text_lang"] == "other" and r["text_words"] == 0


def test_pii_and_sensitive_in_one_pass():
    r = clean_caption("联系我13800138000，傻逼勿扰")
    assert "<手机号>" in r["caption"] and "**" in r["caption"]
    assert r["pii_phone"] == 1 and r["sensitive_hits"] == 1


def test_sensitive_reject_via_thresholds():
    c = CaptionCleaner(TextConfig(sensitive_action="reject"))
    r = c.clean("this is fucking great weather")
    assert "fucking" in r["caption"] and r["sensitive_hits"] == 1
    assert caption_reason(r, TextThresholds(reject_sensitive=True)) == "sensitive_caption"


def test_batch_is_row_aligned():
    raws = ["a red car on the road", None, b"\xff\xfe", "查看原网页", "一只猫"]
    cols = clean_captions(raws)
    assert list(cols) == list(TEXT_COLUMNS)
    assert all(len(v) == len(raws) for v in cols.values())
    reasons = caption_reasons(cols)
    assert reasons[0] is None and reasons[1] == "empty_caption" and reasons[4] is None
    assert reasons[3] in {"empty_caption", "uninformative_caption"}


def test_bad_boilerplate_path_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        CaptionCleaner(TextConfig(boilerplate_path=str(tmp_path / "nope.txt")))


def test_custom_boilerplate(tmp_path):
    p = tmp_path / "bp.txt"
    p.write_text("# comment\n广告\n=pic\n", encoding="utf-8")
    c = CaptionCleaner(TextConfig(boilerplate_path=str(p)))
    assert c.clean("好看的裙子 广告")["caption"] == "好看的裙子"
    assert c.clean("查看原网页")["caption"] == "查看原网页"  # default list replaced


def test_contact_only_alt_text_is_uninformative_but_descriptions_are_not():
    from filters.text import clean_caption

    for raw in ("img, contact +8616655996038", "封面，投稿邮箱 xu.chen3@163.com",
                "DSC3675.webp, pay to card 356827640160866703", "#wallpaper #art, tel: 180-3773-2538"):
        assert clean_caption(raw)["text_uninformative"], raw
    for raw in ("two red circles on the left, call 138-1234-5678", "两个红色圆形在左边，电话 13812345678",
                "an image of a cat"):
        assert not clean_caption(raw)["text_uninformative"], raw


# ---- Unicode: full-width letters and digits become ASCII, CJK punctuation stays ------------

def test_cjk_punctuation_kept_in_chinese_text():
    s = "草地上，前面坐了一个人（左边）：他说；好吗！？是的。"
    assert normalize_text(s) == s
    assert normalize_text("价格１２３元，型号ＡＢＣ。") == "价格123元，型号ABC。"
    assert normalize_text("等一下……好的～") == "等一下……好的～"


def test_fullwidth_punctuation_in_latin_text_becomes_ascii():
    assert normalize_text("Ｈｅｌｌｏ，ｗｏｒｌｄ！（ｏｋ）") == "Hello,world!(ok)"


def test_clean_caption_keeps_chinese_punctuation_and_stats():
    r = clean_caption("一只猫在沙发上，前面坐了一个小孩。")
    assert r["caption"] == "一只猫在沙发上，前面坐了一个小孩。"
    assert r["text_lang"] == "zh" and "，" not in words(r["caption"]) and r["text_words"] >= 6
    assert caption_reason(r) is None


def test_downstream_rules_with_fullwidth_punctuation():
    # Boilerplate after a full-width separator, a file name with full-width brackets, hashtags.
    r = clean_caption("海边的日落美景，查看原网页！")
    assert r["caption"] == "海边的日落美景" and r["text_boilerplate_removed"] == 1
    assert clean_caption("微信图片（１）.jpg")["text_is_filename"]
    assert clean_caption("图片！")["text_uninformative"]
    r = clean_caption("哈哈哈哈，哈哈哈哈，哈哈哈哈！")
    assert r["text_repetition"] > 0.6
