"""Caption cleaning and text stats.

`clean_caption(raw)` is the whole text rule set for one caption; `CaptionCleaner` holds the
compiled state (boilerplate regex, OpenCC converter, sensitive-word automaton, PII patterns) and
has `clean` / `clean_batch`. Order of work and why:

1. bytes are decoded as UTF-8 with errors="replace" (recorded in `text_decode_replaced`);
2. HTML entities unescaped, stray tags dropped; NFKC (full-width digits and letters -> ASCII),
   except that CJK sentence punctuation (，（）：；！？～……) stays as written in Chinese, Japanese
   and Korean text (NFKC would turn it into ASCII: 上,前面); control and invisible format
   characters removed (ZWJ kept: it joins emoji); whitespace collapsed;
3. traditional -> simplified Chinese (OpenCC t2s), only for captions with Han characters;
4. boilerplate phrases removed (filters/data/boilerplate.txt);
5. PII redacted to typed placeholders, then sensitive words matched (PII first, so a lexicon
   entry made of digits can never break a phone number apart and let it through; the matcher
   never matches into a placeholder, so 身份证 cannot turn <身份证号> into <***号>);
6. optional person-name redaction (opt-in, see filters/names.py);
7. stats on the final caption: language, characters, words (jieba for zh), Han characters,
   repetition, file-name / hashtag-only / uninformative flags.

Only `caption_reason` turns stats into a decision, with thresholds that select can change
without re-running the stats.
"""
from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filters import language as lang_mod
from filters.pii import DEFAULT_PHONE_REGIONS, PII_TYPES, PiiRedactor
from filters.sensitive import (
    DEFAULT_COMMON_RANK, SensitiveMatcher, default_lexicon_path, read_lexicon,
)

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_BOILERPLATE = DATA_DIR / "boilerplate.txt"


def load_wordlist(path: str | Path) -> list[str]:
    """Entries of a one-per-line file; blank lines and lines starting with '#' are skipped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"word list {p} does not exist: pass an existing file (one entry per line)")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


@dataclass(frozen=True)
class Boilerplate:
    embedded: tuple[str, ...]  # removed wherever they occur
    whole: frozenset[str]  # casefolded; uninformative only as the whole caption

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Boilerplate":
        entries = load_wordlist(path or DEFAULT_BOILERPLATE)
        # Normalised exactly like captions, so a phrase with ，in it still matches.
        embedded = tuple(nfkc(e) for e in entries if not e.startswith("="))
        whole = frozenset(nfkc(e[1:]).strip().casefold()
                          for e in entries if e.startswith("=") and e[1:].strip())
        return cls(embedded, whole)


@dataclass(frozen=True)
class TextConfig:
    boilerplate_path: str | None = None  # None: filters/data/boilerplate.txt
    t2s: bool = True
    redact_pii: bool = True
    pii_action: str = "placeholder"  # placeholder | remove | reject (filters/pii.py)
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    phone_bare_numbers: bool = False  # also bare 8-digit HK/MO and 10-digit US numbers
    sensitive_lexicon: str | None = None  # None: filters/data/sensitive_default.txt; "" disables
    sensitive_action: str = "mask"  # mask | reject | tag
    sensitive_min_len: int = 2
    sensitive_allowlist: tuple[str, ...] = ()
    sensitive_zh_boundaries: bool = True
    # Lexicon hygiene (filters/sensitive.py): forced entries, the everyday-word rank cut in
    # jieba's dictionary (None: off), and entries exempted for this run by annotate's share pass.
    sensitive_strict: tuple[str, ...] = ()
    sensitive_strict_file: str | None = None
    sensitive_common_rank: int | None = DEFAULT_COMMON_RANK
    sensitive_exempt: tuple[str, ...] = ()
    redact_names: bool = False  # opt-in: measured precision is in filters/names.py


@dataclass(frozen=True)
class TextThresholds:
    """Defaults: DataComp's English rule (> 2 words and > 5 characters) and a Chinese word-count
    range (at least one jieba word)."""

    languages: tuple[str, ...] = ("zh", "en")
    min_en_words: int = 3
    min_en_chars: int = 6
    min_zh_words: int = 1
    max_zh_words: int = 128
    max_en_words: int = 128
    max_repetition: float = 0.6
    reject_filenames: bool = True
    reject_hashtag_only: bool = True
    reject_uninformative: bool = True
    reject_sensitive: bool = False  # True when the sensitive action is "reject"


TEXT_COLUMNS: tuple[str, ...] = (
    "caption", "text_decode_replaced", "text_t2s_chars", "text_boilerplate_removed",
    "text_uninformative", "text_is_filename", "text_hashtag_only", "text_lang", "text_chars",
    "text_words", "text_zh_chars", "text_repetition", "sensitive_hits", "sensitive_words",
    *(f"pii_{t}" for t in PII_TYPES),
)

# C0/C1 controls other than whitespace, and invisible format characters (zero-width space and
# non-joiner, direction marks and embeddings, word joiner, BOM). ZWJ (U+200D) is kept: emoji
# sequences such as family emoji depend on it.
_INVISIBLE_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b\u200c\u200e\u200f\u202a-\u202e"
                           "\u2060-\u2064\u2066-\u2069\ufeff\u00ad]")
_WS_RE = re.compile(r"\s+")
_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]{0,200})?/?>")
_SEP = r"[\s\-–—|:：;；·•,，、。.!！?？~～…>»/\\()（）\[\]【】]*"
_WORDLIKE_RE = re.compile(r"[^\W_]")
# What is left of a caption that carries no description: placeholders of redacted PII, masked
# sensitive words, hashtags and links.
_NON_CONTENT_RE = re.compile(r"<[^<>\s]{1,8}>|\*+|#[^\s#]+#?|https?://\S+|www\.\S+")
_HASHTAGS_RE = re.compile(r"^(?:#[^\s#]+#?\s*)+$")
# Words that only introduce contact or attribution details ("tel:", "投稿邮箱", "pay to card"):
# alt-text made of these, placeholders, file names and generic words describes nothing.
_CONTACT_RE = re.compile(
    r"\b(?:contact|call|tel|phone|mobile|email|e-mail|mail|whatsapp|wechat|source|see|pay|to|"
    r"card|id|at|via|more|info)\b|联系人|联系|电话|热线|咨询|邮箱|投稿|微信|同号|证件号码|身份证|"
    r"来源|手机|详情见|详见|号码|请|私信", re.IGNORECASE)
_FILE_TOKEN_RE = re.compile(r"\S+\.(?:jpe?g|jfif|png|gif|webp|bmp|tiff?|heic|avif)\b"
                            r"|\b(?:img|dsc|image|photo|pic)[_\-]?\d*\b", re.IGNORECASE)
_IMG_EXT = r"(?:jpe?g|jfif|png|gif|webp|bmp|tiff?|heic|heif|svg|avif|ico)"
_FILENAME_RE = re.compile(
    rf"^[\w\-.()（）\[\]【】~+=@,，' ]{{0,200}}\.{_IMG_EXT}$"
    r"|^(?:img|dsc[nf]?|dcim|pict?|pxl|mvimg|wp|vid|photo|image|screenshot|screen ?shot"
    r"|snapshot|scan|sam|gopr|dji|p)[\s_\-]?\d[\d_\-\s.]*$"
    r"|^\d{3,}$"
    r"|^[0-9a-f]{16,}$|^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    re.IGNORECASE)


def decode_caption(raw: str | bytes | None) -> tuple[str, bool]:
    """(text, replaced): bytes are decoded as UTF-8 with errors='replace'; None becomes ''."""
    if raw is None:
        return "", False
    if isinstance(raw, (bytes, bytearray, memoryview)):
        b = bytes(raw)
        try:
            return b.decode("utf-8"), False
        except UnicodeDecodeError:
            return b.decode("utf-8", errors="replace"), True
    if not isinstance(raw, str):
        return str(raw), False
    return raw, False


# Sentence punctuation of Chinese (and Japanese/Korean) text that NFKC maps to ASCII or to
# "...": kept as written there, because ，（）：；！？ are correct Chinese typography.
_CJK_PUNCT_RE = re.compile("([，（）：；！？～…‥])")
_CJK_SCRIPT_RE = re.compile(f"{lang_mod.HAN_RE.pattern}|{lang_mod.KANA_HANGUL_RE.pattern}")


def nfkc(text: str) -> str:
    """NFKC (full-width letters and digits to ASCII, compatibility forms folded), leaving CJK
    sentence punctuation alone in text that has CJK characters."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    if _CJK_PUNCT_RE.search(text) and _CJK_SCRIPT_RE.search(text):
        parts = _CJK_PUNCT_RE.split(text)  # odd positions hold the punctuation
        return "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))
    return unicodedata.normalize("NFKC", text)


def normalize_text(text: str) -> str:
    """HTML unescape, tag strip, NFKC (CJK punctuation kept in CJK text), invisible-character
    removal, whitespace collapse."""
    if "&" in text:
        text = html.unescape(text)
        if "&" in text:  # doubly escaped alt text (&amp;quot;) is common on the web
            text = html.unescape(text)
    if "<" in text:
        text = _TAG_RE.sub(" ", text)
    if not text.isascii():
        text = nfkc(text)
        text = _INVISIBLE_RE.sub("", text)
    elif _INVISIBLE_RE.search(text):
        text = _INVISIBLE_RE.sub("", text)
    return _WS_RE.sub(" ", text).strip()


def is_filename(text: str) -> bool:
    t = text.strip()
    return bool(t) and len(t) <= 220 and _FILENAME_RE.match(t) is not None


def is_hashtag_only(text: str) -> bool:
    return bool(_HASHTAGS_RE.match(text.strip()))


def repetition_ratio(tokens: Sequence[str], han: int = 0, han_unique: int = 0) -> float:
    """Share of repeated units: 1 - unique/total over word tokens, and over Han characters for
    captions of 6+ Han characters (so 哈哈哈哈哈哈, one jieba token, still scores high; 0.25 is
    subtracted there because ordinary Chinese repeats characters such as 的); the max."""
    r = 0.0
    if len(tokens) >= 2:
        r = 1.0 - len(set(map(str.lower, tokens))) / len(tokens)
    if han >= 6:
        r = max(r, 1.0 - han_unique / han - 0.25)
    return round(max(r, 0.0), 4)


class CaptionCleaner:
    """Compiled text rules. Build once per worker; `clean` / `clean_batch` are thread-safe."""

    def __init__(self, config: TextConfig | None = None,
                 sensitive: SensitiveMatcher | None | bool = True,
                 pii: PiiRedactor | None | bool = True,
                 names: Any = None):
        self.config = cfg = config or TextConfig()
        self.boilerplate = Boilerplate.load(cfg.boilerplate_path)
        generic = sorted((w for w in self.boilerplate.whole if len(w) > 1), key=len, reverse=True)
        self._generic_re = re.compile("|".join(map(re.escape, generic)), re.IGNORECASE) if generic else None
        self._bp_re = self._compile_boilerplate(self.boilerplate.embedded)
        # The removal regex has to try every position (it starts with optional separators), so
        # an Aho-Corasick scan decides first whether any phrase occurs at all.
        self._bp_auto = None
        if self.boilerplate.embedded:
            import ahocorasick

            self._bp_auto = ahocorasick.Automaton()
            for p_ in {p.lower() for p in self.boilerplate.embedded}:
                self._bp_auto.add_word(p_, p_)
            self._bp_auto.make_automaton()
        self._t2s = None
        if cfg.t2s:
            import opencc

            self._t2s = opencc.OpenCC("t2s")
        if sensitive is True:
            sensitive = build_sensitive(cfg)
        self.sensitive: SensitiveMatcher | None = sensitive or None
        if pii is True:
            pii = PiiRedactor(regions=cfg.phone_regions, action=cfg.pii_action,
                              bare_phones=cfg.phone_bare_numbers) if cfg.redact_pii else None
        self.pii: PiiRedactor | None = pii or None
        if self.sensitive is not None and self.pii is not None:
            # Placeholders this redactor writes (custom ones included) are never matched into.
            ph = getattr(self.pii, "placeholders", None)
            if isinstance(ph, dict):
                extra = {v for d in ph.values() if isinstance(d, dict) for v in d.values()
                         if isinstance(v, str)}
                self.sensitive.protect_more(extra)
        if names is None and cfg.redact_names:
            from filters.names import NameDetector

            names = NameDetector()
        self.names = names

    @staticmethod
    def _compile_boilerplate(phrases: Iterable[str]) -> re.Pattern[str] | None:
        alts = []
        for p in sorted(set(phrases), key=len, reverse=True):
            esc = re.escape(p)
            if p[:1].isascii() and p[:1].isalnum():
                esc = r"(?<![A-Za-z0-9])" + esc
            if p[-1:].isascii() and p[-1:].isalnum():
                esc = esc + r"(?![A-Za-z0-9])"
            alts.append(esc)
        if not alts:
            return None
        return re.compile(f"{_SEP}(?:{'|'.join(alts)}){_SEP}", re.IGNORECASE)

    def _remove_boilerplate(self, text: str) -> tuple[str, int]:
        if self._bp_re is None or self._bp_auto is None:
            return text, 0
        low = text.lower()
        if next(self._bp_auto.iter(low), None) is None:
            return text, 0
        out, n = self._bp_re.subn(" ", text)
        return (out.strip(), n) if n else (text, 0)

    def _descriptive_residue(self, text: str) -> str:
        """What is left once placeholders, masks, hashtags, links, file names, generic words
        (封面, image ...) and contact/attribution words are taken out."""
        rest = _FILE_TOKEN_RE.sub(" ", _NON_CONTENT_RE.sub(" ", text))
        rest = _CONTACT_RE.sub(" ", rest)
        if self._generic_re is not None:
            rest = self._generic_re.sub(" ", rest)
        return rest

    def sensitive_input(self, raw: str | bytes | None) -> str:
        """The text sensitive matching sees for `raw` (steps 1-5 up to PII redaction); the
        annotate stage's share pass measures lexicon entries on it."""
        return self._fix(raw)[0]

    def _fix(self, raw: str | bytes | None) -> tuple[str, bool, int, int, bool, dict[str, int], int]:
        text, replaced = decode_caption(raw)
        text = normalize_text(text)
        han = lang_mod.count_han(text)

        t2s_chars = 0
        # Japanese kanji are not traditional Chinese: leave captions with kana/hangul alone.
        if self._t2s is not None and han and not lang_mod.KANA_HANGUL_RE.search(text):
            simp = self._t2s.convert(text)
            if simp != text:
                t2s_chars = sum(a != b for a, b in zip(text, simp)) + abs(len(simp) - len(text))
                text = simp

        whole_generic = text.strip(" .!?,:;-_|~*'\"，。！？：；～").casefold() in self.boilerplate.whole
        text, removed = self._remove_boilerplate(text)
        uninformative = whole_generic or (removed > 0 and not _WORDLIKE_RE.search(text))

        pii_counts: dict[str, int] = {}
        if self.pii is not None and text:
            text, pii_counts = self.pii.redact(text, lang="zh" if han else "en")
        return text, replaced, t2s_chars, removed, uninformative, pii_counts, han

    def clean(self, raw: str | bytes | None) -> dict[str, Any]:
        text, replaced, t2s_chars, removed, uninformative, pii_counts, han = self._fix(raw)
        hits: list[str] = []
        if self.sensitive is not None and text:
            text, hits = self.sensitive.apply(text)
        if self.names is not None and text:
            text, n_names = self.names.redact(text, lang="zh" if han else "en")
            if n_names:
                pii_counts["name"] = pii_counts.get("name", 0) + n_names

        # Nothing but placeholders, masks, hashtags and links once boilerplate is gone.
        if not uninformative and (removed or pii_counts or hits) and \
                not _WORDLIKE_RE.search(self._descriptive_residue(text)):
            uninformative = True
        counts = lang_mod.script_counts(text)
        lang = lang_mod.language_of_counts(counts)
        toks = lang_mod.words(text, "zh" if counts.han else "en")
        row: dict[str, Any] = {
            "caption": text,
            "text_decode_replaced": replaced,
            "text_t2s_chars": t2s_chars,
            "text_boilerplate_removed": removed,
            "text_uninformative": uninformative,
            "text_is_filename": is_filename(text),
            "text_hashtag_only": "#" in text and is_hashtag_only(text),
            "text_lang": lang,
            "text_chars": len(text),
            "text_words": len(toks),
            "text_zh_chars": counts.han,
            "text_repetition": repetition_ratio(toks, counts.han, counts.han_unique),
            "sensitive_hits": len(hits),
            "sensitive_words": hits,
        }
        for t in PII_TYPES:
            row[f"pii_{t}"] = pii_counts.get(t, 0)
        return row

    def clean_batch(self, raws: Iterable[str | bytes | None]) -> dict[str, list[Any]]:
        """Column-wise batch: one list per name in TEXT_COLUMNS, row-aligned with `raws`."""
        cols: dict[str, list[Any]] = {k: [] for k in TEXT_COLUMNS}
        for raw in raws:
            row = self.clean(raw)
            for k in TEXT_COLUMNS:
                cols[k].append(row[k])
        return cols


def build_sensitive(cfg: TextConfig) -> SensitiveMatcher | None:
    """The sensitive matcher a TextConfig asks for (None: disabled). The shipped lexicon is a
    short curated list, so all of its entries are strict; a lexicon you pass is treated as raw
    (everyday words exempted unless listed in sensitive_strict / sensitive_strict_file)."""
    if cfg.sensitive_lexicon == "":
        return None
    words = read_lexicon(cfg.sensitive_lexicon or default_lexicon_path())
    strict = list(cfg.sensitive_strict)
    if cfg.sensitive_strict_file:
        strict += read_lexicon(cfg.sensitive_strict_file)
    if cfg.sensitive_lexicon is None:
        allow = set(cfg.sensitive_allowlist)
        strict += [w for w in words if len(w) >= cfg.sensitive_min_len and w not in allow]
    return SensitiveMatcher(
        words, action=cfg.sensitive_action, min_len=cfg.sensitive_min_len,
        allowlist=cfg.sensitive_allowlist, zh_boundaries=cfg.sensitive_zh_boundaries,
        strict=strict, common_rank=cfg.sensitive_common_rank,
        exempt={w: "everyday word of this run (annotate's share pass)" for w in cfg.sensitive_exempt})


_DEFAULT_CLEANER: CaptionCleaner | None = None


def default_cleaner() -> CaptionCleaner:
    global _DEFAULT_CLEANER
    if _DEFAULT_CLEANER is None:
        _DEFAULT_CLEANER = CaptionCleaner()
    return _DEFAULT_CLEANER


def clean_caption(raw: str | bytes | None, cleaner: CaptionCleaner | None = None) -> dict[str, Any]:
    """Cleaned caption plus every text stat (keys: TEXT_COLUMNS), with the default rules."""
    return (cleaner or default_cleaner()).clean(raw)


def clean_captions(raws: Iterable[str | bytes | None],
                   cleaner: CaptionCleaner | None = None) -> dict[str, list[Any]]:
    return (cleaner or default_cleaner()).clean_batch(raws)


# Reason names, in the order caption_reason checks them.
TEXT_REASONS: tuple[str, ...] = (
    "empty_caption", "uninformative_caption", "filename_caption", "hashtag_only_caption",
    "language_not_allowed", "too_few_words", "too_few_chars", "too_many_words", "repetitive_caption",
    "sensitive_caption",
)


def caption_reason(row: dict[str, Any], th: TextThresholds | None = None) -> str | None:
    """First failing text rule for one row of stats (None: passes)."""
    th = th or TextThresholds()
    if not row["text_chars"]:
        return "empty_caption"
    if th.reject_uninformative and row["text_uninformative"]:
        return "uninformative_caption"
    if th.reject_filenames and row["text_is_filename"]:
        return "filename_caption"
    if th.reject_hashtag_only and row["text_hashtag_only"]:
        return "hashtag_only_caption"
    lang = row["text_lang"]
    if lang not in th.languages:
        return "language_not_allowed"
    words = row["text_words"]
    if lang == "zh":
        if words < th.min_zh_words:
            return "too_few_words"
        if words > th.max_zh_words:
            return "too_many_words"
    else:
        if words < th.min_en_words:
            return "too_few_words"
        if row["text_chars"] < th.min_en_chars:
            return "too_few_chars"
        if words > th.max_en_words:
            return "too_many_words"
    if row["text_repetition"] > th.max_repetition:
        return "repetitive_caption"
    if th.reject_sensitive and row["sensitive_hits"]:
        return "sensitive_caption"
    return None


def caption_reasons(cols: dict[str, Sequence[Any]], th: TextThresholds | None = None) -> list[str | None]:
    """Column-wise `caption_reason` over the output of `clean_batch`."""
    th = th or TextThresholds()
    n = len(cols["text_chars"])
    keys = ("text_chars", "text_uninformative", "text_is_filename", "text_hashtag_only",
            "text_lang", "text_words", "text_repetition", "sensitive_hits")
    return [caption_reason({k: cols[k][i] for k in keys}, th) for i in range(n)]
