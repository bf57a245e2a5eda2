"""Person-name detection (opt-in redaction to <人名> / <NAME>).

Chinese: jieba's part-of-speech tagger marks person names 'nr'; that tag alone fires on many
non-names, so a token counts as a name only if it is 2-4 Han characters long, starts with a
surname from filters/data/surnames_zh.txt (compound surnames first), and either carries the
'nr' tag or sits next to a credit/role cue (摄影, 作者, 联系人, 拍摄, 先生...). Surnames that are
also very common words (和, 于, 时...) additionally need the cue.

English: a name is a capitalised first name from filters/data/first_names_en.txt followed by a
capitalised surname-like word, not followed by a place/organisation word (Street, Park,
University...). Names of other origins, single-word names and lower-case names are missed.

Precision/recall on the bundled labelled set (tests/test_filters_names.py, bench/annotate.py)
decide whether this is on by default; it is off (TextConfig.redact_names) unless >= 0.95.
"""
from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Iterable
from pathlib import Path

from filters import language as lang_mod

DATA_DIR = Path(__file__).parent / "data"

ZH_CUES_BEFORE = ("摄影", "作者", "联系人", "记者", "编辑", "主演", "导演", "主持人", "画家", "书法",
                  "设计师", "摄影师", "演员", "歌手", "老师", "医生", "同学", "图/", "文/", "供图", "选手",
                  "队员", "教练", "朋友")
ZH_CUES_AFTER = ("拍摄", "摄", "先生", "女士", "老师", "同学", "医生", "教授", "供图", "作品",
                 "摄影", "绘", "书", "题", "的作品", "主演")
# Surnames that are also everyday words: only trusted next to a cue.
AMBIGUOUS_SURNAMES = frozenset("和于时成明国平来都那但由相门云花海公利信元全应强万文安常高金白方江龙石"
                               "向关路车连景华乐原南燕楚楼满位区权帅屠豆盖练井祖巴丰支国计索宣晋初容敬普"
                               "戈伏鹿薄羊阿乌母修况宿鲜印隆危玉银公哈宾利居干尉斯元束衣信展阴智幸富由")
PLACE_WORDS = frozenset("""Street St Road Rd Avenue Ave Boulevard Lane Drive Park River Lake Bay
Beach Mountain Mount Hill Valley Island Bridge Square Station Airport Hotel Hall Center Centre
University College School Museum Church Cathedral Tower Building Company Inc Ltd Corp Group
Foundation Institute Hospital Stadium Arena Mall Market Garden Gardens Street County City
Falls Canyon Forest Desert Coast Harbor Harbour Port Castle Palace Temple""".split())
_EN_STOP_LAST = frozenset("""The A An And Or Of In On At To For With From By Is Are Was Were Be
New Old Big Small Red Blue Green Black White Day Night Morning Evening Christmas Easter Birthday
Happy Wedding Photo Photos Image Picture Collection Series Edition Style Dress Shirt""".split())
_EN_NAME_RE = re.compile(r"\b([A-Z][a-z]+)\s+((?:[A-Z]\.\s+)?[A-Z][a-z]+(?:-[A-Z][a-z]+)?)\b(?:\s+([A-Z][a-z]+))?")


@lru_cache(maxsize=1)
def _jieba_freq() -> dict[str, int]:
    """jieba's dictionary word frequencies (the same dictionary rjieba segments with)."""
    import jieba

    jieba.setLogLevel(60)
    jieba.initialize()
    return jieba.dt.FREQ


def _load(path: Path) -> list[str]:
    return [s for s in (ln.strip() for ln in path.read_text(encoding="utf-8").splitlines())
            if s and not s.startswith("#")]


class NameDetector:
    def __init__(self, surnames: Iterable[str] | None = None, first_names: Iterable[str] | None = None,
                 max_word_freq: int = 150, max_given_freq: int = 1000):
        self.max_word_freq = max_word_freq
        self.max_given_freq = max_given_freq
        sn = list(dict.fromkeys(surnames if surnames is not None else _load(DATA_DIR / "surnames_zh.txt")))
        self.compound = tuple(s for s in sn if len(s) > 1)
        self.single = frozenset(s for s in sn if len(s) == 1)
        fn = first_names if first_names is not None else _load(DATA_DIR / "first_names_en.txt")
        self.first_names = frozenset(fn)

    # ---- Chinese -----------------------------------------------------------------------------
    def _surname_len(self, tok: str) -> int:
        for c in self.compound:
            if tok.startswith(c):
                return len(c)
        return 1 if tok[:1] in self.single else 0

    def find_zh(self, text: str) -> list[tuple[int, int]]:
        if not lang_mod.count_han(text):
            return []
        tags = lang_mod.pos_tag(text)
        spans = []
        pos = 0
        toks = [w for w, _ in tags]
        for i, (w, flag) in enumerate(tags):
            start = pos
            pos += len(w)
            if not 2 <= len(w) <= 4 or lang_mod.count_han(w) != len(w):
                continue
            sl = self._surname_len(w)
            if not sl or len(w) - sl < 1 or len(w) - sl > 2:
                continue
            before = "".join(toks[max(0, i - 2):i]).rstrip(" :：")
            after = toks[i + 1] if i + 1 < len(toks) else ""
            cue = before.endswith(ZH_CUES_BEFORE) or after.startswith(ZH_CUES_AFTER)
            ambiguous = sl == 1 and w[0] in AMBIGUOUS_SURNAMES
            if ambiguous and not cue:
                continue
            if cue or (flag.startswith("nr") and self._name_like(w, sl)):
                spans.append((start, pos))
        return spans

    def _name_like(self, w: str, sl: int) -> bool:
        """jieba's dictionary tags many common nouns 'nr' (阳光, 叶子, 蓝天): without a cue, a
        name must be a rare dictionary entry and its given part must not be a common word."""
        freq = _jieba_freq()
        if freq.get(w, 0) > self.max_word_freq:
            return False
        given = w[sl:]
        return len(given) < 2 or freq.get(given, 0) <= self.max_given_freq

    # ---- English -----------------------------------------------------------------------------
    def find_en(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for m in _EN_NAME_RE.finditer(text):
            first, last, nxt = m.group(1), m.group(2), m.group(3)
            if first not in self.first_names:
                continue
            last_word = last.split()[-1]
            if last_word in PLACE_WORDS or last_word in _EN_STOP_LAST:
                continue
            if nxt is not None and nxt in PLACE_WORDS:
                continue
            spans.append((m.start(1), m.end(2)))
        return spans

    def find(self, text: str) -> list[tuple[int, int]]:
        return sorted(self.find_zh(text) + self.find_en(text))

    def redact(self, text: str, lang: str = "en") -> tuple[str, int]:
        spans = self.find(text)
        if not spans:
            return text, 0
        ph = "<人名>" if lang == "zh" else "<NAME>"
        out, last = [], 0
        for s, e in spans:
            if s < last:
                continue
            out.append(text[last:s])
            out.append(ph)
            last = e
        out.append(text[last:])
        return "".join(out), len(spans)
