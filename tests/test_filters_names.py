from pathlib import Path

from filters.names import NameDetector
from filters.text import CaptionCleaner, TextConfig

DET = NameDetector()


def _eval_rows():
    path = Path(__file__).resolve().parents[1] / "filters" / "data" / "names_eval.tsv"
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            text, _, gold = line.partition("\t")
            yield text, {g for g in gold.split(",") if g}


def test_labelled_set_precision_and_recall_floor():
    tp = fp = fn = 0
    for text, gold in _eval_rows():
        pred = {text[s:e] for s, e in DET.find(text)}
        tp += len(pred & gold)
        fp += len(pred - gold)
        fn += len(gold - pred)
    assert tp / (tp + fp) >= 0.95
    assert tp / (tp + fn) >= 0.75


def test_common_nouns_tagged_nr_by_jieba_are_not_names():
    for text in ["温暖的阳光洒在窗台", "叶子上的露珠", "白云飘过蓝天", "和朋友一起喝咖啡"]:
        assert DET.find(text) == [], text


def test_cue_words():
    assert DET.redact("摄影：王小明", "zh") == ("摄影:<人名>".replace(":", "："), 1)
    assert DET.redact("photo by James Smith", "en") == ("photo by <NAME>", 1)


def test_english_places_are_not_names():
    assert DET.find("George Street at night") == []
    assert DET.find("a red car parked outside") == []


def test_opt_in_through_text_config():
    off = CaptionCleaner(TextConfig(sensitive_lexicon="")).clean("摄影：张伟")
    on = CaptionCleaner(TextConfig(sensitive_lexicon="", redact_names=True)).clean("摄影：张伟")
    assert off["pii_name"] == 0 and "张伟" in off["caption"]
    assert on["pii_name"] == 1 and "<人名>" in on["caption"]
