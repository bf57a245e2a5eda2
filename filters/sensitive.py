"""Sensitive-word matching with Aho-Corasick (pyahocorasick) over normalised captions.

One automaton over the whole lexicon, so cost grows with caption length, not lexicon size
(a 50k-word lexicon runs at the same speed as a 50-word one). Matching is case-insensitive.
Lexicon hygiene, because a raw lexicon fires on innocent text:

* `min_len`: shorter entries are dropped (a one-character entry hits almost every caption);
* `allowlist`: entries equal to an allowlisted word are dropped, and a match lying inside an
  allowlisted phrase found in the caption is ignored (allowlist 骑马的 protects 马的 there);
* Chinese boundaries (`zh_boundaries`): a multi-character match with Han characters must start
  and end on jieba token boundaries, so 马的 does not fire inside 骑马/的/人;
* English boundaries: an entry that starts/ends with an ASCII letter or digit only matches at
  word boundaries, so "ass" does not fire inside "class".

Overlapping matches are all reported; `mask` replaces the union of their spans with '*'.
"""
from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import ahocorasick

from filters import language as lang_mod

ACTIONS = ("mask", "reject", "tag")
DEFAULT_LEXICON = Path(__file__).parent / "data" / "sensitive_default.txt"


def default_lexicon_path() -> str:
    return str(DEFAULT_LEXICON)


def read_lexicon(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sensitive lexicon {p} does not exist: pass a text file with one word per line")
    words = []
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            words.append(s)
    return words


def _normalise_word(w: str, t2s: Any) -> str:
    import unicodedata

    w = unicodedata.normalize("NFKC", w).strip().lower()
    if t2s is not None and not w.isascii():
        w = t2s.convert(w)
    return w


def _lower_same_length(text: str) -> str:
    low = text.lower()
    if len(low) == len(text):
        return low
    # A few characters (e.g. 'İ') lower to two code points; keep those as they are so that
    # match offsets stay valid for the original text.
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _is_ascii_alnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _build(words: Iterable[str]) -> ahocorasick.Automaton | None:
    a = ahocorasick.Automaton()
    n = 0
    for w in words:
        a.add_word(w, w)
        n += 1
    if not n:
        return None
    a.make_automaton()
    return a


class Match(NamedTuple):
    start: int
    end: int  # exclusive
    word: str


class SensitiveMatcher:
    def __init__(self, words: Iterable[str], action: str = "mask", min_len: int = 2,
                 allowlist: Iterable[str] = (), zh_boundaries: bool = True,
                 zh_boundary_max_len: int = 2,
                 en_boundaries: bool = True, t2s: bool = True):
        if action not in ACTIONS:
            raise ValueError(f"sensitive action {action!r} is not one of {ACTIONS}")
        self.action = action
        self.zh_boundaries = zh_boundaries
        self.en_boundaries = en_boundaries
        conv = None
        if t2s:
            import opencc

            conv = opencc.OpenCC("t2s")
        allow = {_normalise_word(w, conv) for w in allowlist if w.strip()}
        self.dropped_short: list[str] = []
        kept: set[str] = set()
        for w in words:
            nw = _normalise_word(w, conv)
            if not nw:
                continue
            if len(nw) < min_len:
                self.dropped_short.append(w)
            elif nw not in allow:
                kept.add(nw)
        self.words = frozenset(kept)
        self._auto = None
        if kept:
            # Per-word facts are computed once here, not per hit.
            self._auto = ahocorasick.Automaton()
            for w in sorted(kept):
                # Only short words need the boundary check: accidental hits inside ordinary text
                # (马的 in 骑马的人, 一个, 女人) are 2 characters; longer lexicon entries rarely
                # occur by chance, and jieba often splits such rare words differently (套路贷请).
                self._auto.add_word(w, (w, len(w), 1 < len(w) <= zh_boundary_max_len
                                        and bool(lang_mod.HAN_RE.search(w)),
                                        _is_ascii_alnum(w[0]), _is_ascii_alnum(w[-1])))
            self._auto.make_automaton()
        self._allow_auto = _build(sorted(allow))

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> "SensitiveMatcher":
        return cls(read_lexicon(path), **kw)

    def find(self, text: str) -> list[Match]:
        """All accepted matches (overlapping ones included), sorted by start."""
        if self._auto is None or not text:
            return []
        low = _lower_same_length(text)
        it = self._auto.iter(low)
        first = next(it, None)
        if first is None:
            return []
        protected: list[tuple[int, int]] = []
        if self._allow_auto is not None:
            protected = [(e + 1 - len(w), e + 1) for e, w in self._allow_auto.iter(low)]
        bounds: tuple[frozenset[int], frozenset[int]] | None = None
        n = len(low)
        check_en = self.en_boundaries
        check_zh = self.zh_boundaries
        out = []
        for end, (w, wl, han_multi, alnum_start, alnum_end) in itertools.chain((first,), it):
            e = end + 1
            s = e - wl
            if check_en and ((alnum_start and s > 0 and _is_ascii_alnum(low[s - 1]))
                             or (alnum_end and e < n and _is_ascii_alnum(low[e]))):
                continue
            if protected and any(ps <= s and e <= pe for ps, pe in protected):
                continue
            if check_zh and han_multi:
                if bounds is None:
                    bounds = lang_mod.token_boundaries(text)
                if s not in bounds[0] or e not in bounds[1]:
                    continue
            out.append(Match(s, e, w))
        out.sort()
        return out

    def mask(self, text: str, matches: Sequence[Match]) -> str:
        if not matches:
            return text
        chars = list(text)
        for m in matches:
            for i in range(m.start, m.end):
                if not chars[i].isspace():
                    chars[i] = "*"
        return "".join(chars)

    def apply(self, text: str) -> tuple[str, list[str]]:
        """(text after the action, matched words in order). Only `mask` changes the text; for
        `reject` and `tag` the caller turns the hits into a reason or a tag column."""
        matches = self.find(text)
        words = [m.word for m in matches]
        if self.action == "mask" and matches:
            text = self.mask(text, matches)
        return text, words

    def apply_batch(self, texts: Iterable[str]) -> dict[str, list[Any]]:
        cols: dict[str, list[Any]] = {"text": [], "sensitive_hits": [], "sensitive_words": []}
        for t in texts:
            new, words = self.apply(t)
            cols["text"].append(new)
            cols["sensitive_hits"].append(len(words))
            cols["sensitive_words"].append(words)
        return cols


@dataclass
class AuditReport:
    n_lexicon: int
    n_used: int  # after min_len / allowlist
    n_dropped_short: int
    n_captions: int
    n_hit_captions: int
    hit_rate: float
    top_words: list[tuple[str, int]]  # (word, captions it hit), most frequent first
    n_words_hit: int
    warn: bool
    warn_rate: float
    examples: dict[str, list[str]] = field(default_factory=dict)

    def format(self) -> str:
        lines = [
            f"lexicon: {self.n_lexicon} entries, {self.n_used} used "
            f"({self.n_dropped_short} shorter than min_len dropped)",
            f"captions: {self.n_captions}, hit: {self.n_hit_captions} "
            f"({100 * self.hit_rate:.2f}%), distinct words hit: {self.n_words_hit}",
        ]
        if self.warn:
            lines.append(f"WARNING: the lexicon hits more than {100 * self.warn_rate:.1f}% of captions; "
                         "look at the top words below for entries that fire on innocent text "
                         "(add them to the allowlist or raise min_len)")
        if self.top_words:
            lines.append("most frequent hits (word: captions):")
            for w, n in self.top_words:
                ex = "; ".join(self.examples.get(w, [])[:2])
                lines.append(f"  {w}: {n}" + (f"   e.g. {ex}" if ex else ""))
        return "\n".join(lines)


def audit_lexicon(words: Sequence[str], captions: Iterable[str | bytes | None], top: int = 20,
                  warn_rate: float = 0.03, min_len: int = 2, allowlist: Iterable[str] = (),
                  zh_boundaries: bool = True, normalize: bool = True) -> AuditReport:
    """How a lexicon behaves on a caption sample: share of captions hit and the words that hit
    most (a word hitting many captions is usually an innocent substring)."""
    matcher = SensitiveMatcher(words, action="tag", min_len=min_len, allowlist=allowlist,
                               zh_boundaries=zh_boundaries)
    norm = None
    if normalize:
        from filters.text import decode_caption, normalize_text

        norm = lambda c: normalize_text(decode_caption(c)[0])  # noqa: E731
    per_word: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    n = hit = 0
    for c in captions:
        text = norm(c) if norm else (c or "")
        n += 1
        found = {m.word for m in matcher.find(text)}
        if found:
            hit += 1
            for w in found:
                per_word[w] += 1
                ex = examples.setdefault(w, [])
                if len(ex) < 3:
                    ex.append(text[:80])
    rate = hit / n if n else 0.0
    return AuditReport(
        n_lexicon=len(words), n_used=len(matcher.words), n_dropped_short=len(matcher.dropped_short),
        n_captions=n, n_hit_captions=hit, hit_rate=rate, top_words=per_word.most_common(top),
        n_words_hit=len(per_word), warn=rate > warn_rate, warn_rate=warn_rate, examples=examples)
