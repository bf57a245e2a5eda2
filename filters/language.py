"""Language by script ratio, Chinese word segmentation and word counts.

Language id is a script count, not a model: captions are short and the pipeline only needs
zh / en / other. Han characters are weighed against Latin *words* (one Han character carries
about as much as one English word), so "华为Mate60手机" is zh and "sunset at the beach 日落" is en.
Kana or Hangul beyond a small share makes a caption "other" (Japanese / Korean), and so does a
caption written mostly in another alphabet (Cyrillic, Arabic...). Latin-script languages other
than English are not told apart from English here.

Segmentation uses jieba's dictionary and algorithm through rjieba (the jieba-rs binding, ~30x
faster than pure-Python jieba on short captions); plain jieba is the fallback when rjieba is not
installed. Results are cached because web captions repeat a lot.
"""
from __future__ import annotations

from collections.abc import Sequence

import re
from dataclasses import dataclass
from functools import lru_cache

from filters.scripts import HAN_RE

try:  # pragma: no cover - which branch runs depends on the environment
    import rjieba as _rjieba

    def _cut(text: str) -> list[str]:
        return _rjieba.cut(text, True)

    def _tag(text: str) -> list[tuple[str, str]]:
        return _rjieba.tag(text)

    SEGMENTER = "rjieba"
except ImportError:  # pragma: no cover
    import jieba as _jieba
    import jieba.posseg as _posseg

    _jieba.setLogLevel(60)

    def _cut(text: str) -> list[str]:
        return _jieba.lcut(text)

    def _tag(text: str) -> list[tuple[str, str]]:
        return [(p.word, p.flag) for p in _posseg.lcut(text)]

    SEGMENTER = "jieba"

LANGUAGES = ("zh", "en", "other")

KANA_HANGUL_RE = re.compile("[\u3040-\u30ff\u31f0-\u31ff\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_LATIN_WORD_RE = re.compile("[A-Za-z\u00c0-\u024f]+")
_LETTER_RE = re.compile(r"[^\W\d_]")
# A token counts as a word if it holds a letter, digit or Han character (not punctuation/space).
_WORDLIKE_RE = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class ScriptCounts:
    han: int
    latin: int
    latin_words: int
    kana_hangul: int
    letters: int  # all letters including the above
    han_unique: int = 0  # distinct Han characters (for the repetition stat)


def script_counts(text: str) -> ScriptCounts:
    """Letter counts by script. Letters of other alphabets are only counted when the Han rule
    has not already made the caption zh (they only matter for the en/other decision)."""
    if text.isascii():
        runs = _LATIN_WORD_RE.findall(text)
        latin = sum(map(len, runs))
        return ScriptCounts(0, latin, len(runs), 0, latin)
    han_chars = HAN_RE.findall(text)
    han = len(han_chars)
    runs = _LATIN_WORD_RE.findall(text)
    latin = sum(map(len, runs))
    kh = len(KANA_HANGUL_RE.findall(text)) if KANA_HANGUL_RE.search(text) else 0
    letters = han + latin + kh
    if not han or han < len(runs) or kh:
        letters = len(_LETTER_RE.findall(text))
    return ScriptCounts(han, latin, len(runs), kh, letters, len(set(han_chars)))


def count_han(text: str) -> int:
    return 0 if text.isascii() else len(HAN_RE.findall(text))


def language_of_counts(c: ScriptCounts, kana_hangul_share: float = 0.2,
                       latin_share: float = 0.5) -> str:
    if c.letters == 0:
        return "other"
    cjk = c.han + c.kana_hangul
    if c.kana_hangul and c.kana_hangul >= kana_hangul_share * cjk:
        return "other"
    if c.han and c.han >= c.latin_words:
        return "zh"
    if c.latin >= latin_share * c.letters:
        return "en"
    return "other"


def detect_language(text: str) -> str:
    """'zh', 'en' or 'other' (no letters, Japanese, Korean, or another alphabet)."""
    return language_of_counts(script_counts(text))


@lru_cache(maxsize=1 << 16)
def segment(text: str) -> tuple[str, ...]:
    """jieba segmentation (cached). Tokens include spaces and punctuation, as jieba returns."""
    return tuple(_cut(text))


@lru_cache(maxsize=1 << 14)
def pos_tag(text: str) -> tuple[tuple[str, str], ...]:
    """jieba part-of-speech tags (cached); 'nr' marks person names."""
    return tuple((w, f) for w, f in _tag(text))


def words(text: str, lang: str | None = None) -> list[str]:
    """Word tokens: jieba for text with Han characters, whitespace split otherwise.

    Tokens without a letter, digit or Han character (punctuation, emoji) are not words.
    """
    if lang is None:
        lang = "zh" if count_han(text) else "en"
    toks = segment(text) if lang == "zh" else text.split()
    return [t for t in toks if t.isalnum() or (not t.isspace() and _WORDLIKE_RE.search(t))]


@lru_cache(maxsize=1 << 14)
def token_boundaries(text: str) -> tuple[frozenset[int], frozenset[int]]:
    """(start offsets, end offsets) of jieba tokens; cached like `segment`."""
    starts, ends = [], []
    pos = 0
    for tok in segment(text):
        starts.append(pos)
        pos += len(tok)
        ends.append(pos)
    return frozenset(starts), frozenset(ends)


def token_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each jieba token, covering the whole text."""
    spans = []
    pos = 0
    for tok in segment(text):
        spans.append((pos, pos + len(tok)))
        pos += len(tok)
    return spans


ANY_LANGUAGE = "*"


def route_language(lang: str | None, keys: Sequence[str]) -> str | None:
    """Which per-language setting applies to a caption language: exact key, then the base
    language ('zh-Hant' -> 'zh'), then the '*' fallback; None when nothing matches."""
    if lang:
        lang_l = str(lang).lower()
        if lang_l in keys:
            return lang_l
        base = lang_l.replace("_", "-").split("-")[0]
        if base in keys:
            return base
    return ANY_LANGUAGE if ANY_LANGUAGE in keys else None
