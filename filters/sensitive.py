"""Sensitive-word matching with Aho-Corasick over normalised captions.

One automaton over the whole lexicon (ahocorasick_rs), so cost grows with caption length, not
lexicon size. pyahocorasick, used for the small allowlist and placeholder automata, scans a
node's children linearly: a real Chinese lexicon starts with thousands of distinct characters,
and its root lookups made a 50k-entry public-style lexicon 10x slower per caption (15 us against
1.5 us with ahocorasick_rs, bench/annotate.py). Matching is case-insensitive.
Lexicon hygiene, because a raw lexicon fires on innocent text:

* `min_len`: shorter entries are dropped (a one-character entry hits almost every caption);
* `allowlist`: entries equal to an allowlisted word are dropped, and a match lying inside an
  allowlisted phrase found in the caption is ignored (allowlist 骑马的 protects 马的 there);
* Chinese boundaries (`zh_boundaries`): a multi-character match with Han characters must start
  and end on jieba token boundaries, so 马的 does not fire inside 骑马/的/人;
* English boundaries: an entry that starts/ends with an ASCII letter or digit only matches at
  word boundaries, so "ass" does not fire inside "class";
* everyday words (`common_rank`): raw public lists carry 一个, 女人, 帽子, 黄色; an entry among
  the `common_rank` most frequent entries of jieba's frequency dictionary (jieba/dict.txt: word,
  count, part of speech) is exempt. That includes frequent names (台湾, 毛泽东): jieba's
  part-of-speech tags are too noisy to set names apart (东西 and 长大 are tagged as places);
  force such entries with `strict`;
* run share (`measure_shares` / `share_exemptions`): an entry found in more than a set share of
  a run's own captions is exempt (annotate's `prepare` measures it and reports the list);
* `strict`: entries the user forces; they are matched whatever the rules above say.

Placeholders of redacted PII (`<身份证号>`, `<PHONE>` ...) are never matched into, so 身份证 in
the lexicon cannot turn `<身份证号>` into `<***号>`.

Overlapping matches are all reported; `mask` replaces the union of their spans with '*'.
"""
from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import ahocorasick
import ahocorasick_rs

from filters import language as lang_mod

ACTIONS = ("mask", "reject", "tag")
DEFAULT_LEXICON = Path(__file__).parent / "data" / "sensitive_default.txt"
# jieba's dictionary ranked by count: rank 20,000 is a count of 260. Inside: 一个 (rank 34), 女人
# (1,031), 背景 (2,592), 黄色 (3,859), 帽子 (7,031), and the concrete words captions are made of
# that sit between ranks 10k and 20k (聊天, 头盔, 裙子, 衬衫, 散步, 背包, 草坪). Also inside: some
# words a lexicon means (赌博 10,651, 毒品 11,269, 婊子 14,349, 色情 17,487, 贱人 18,966); the audit
# lists them and `strict` forces them. bench/lexicon_real.py: a 10k cut left 1.9% of clean
# captions altered (the mid-frequency tail), 15k 0.9%, 20k 0.44%, with inserted rare terms
# masked 0.997 / 0.991 / 0.984.
DEFAULT_COMMON_RANK = 20_000
# Share of a run's captions above which an entry is taken for an everyday word of this run.
DEFAULT_MAX_SHARE = 0.01
# Fewer hits than this are no evidence of an everyday word (a tiny run, a spam burst of 3 rows).
SHARE_MIN_HITS = 20


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


def jieba_dict_path() -> Path:
    spec = importlib.util.find_spec("jieba")
    if spec is None or spec.origin is None:
        raise ImportError("jieba is not installed; it ships the frequency dictionary the everyday-word "
                          "rule uses (pip install jieba, or set sensitive_common_rank to null)")
    return Path(spec.origin).parent / "dict.txt"


@lru_cache(maxsize=4)
def common_words(max_rank: int) -> dict[str, tuple[int, int]]:
    """The `max_rank` most frequent entries of jieba's dictionary: word -> (rank, count). Equal
    counts share a rank (so a few more than `max_rank` may be returned)."""
    if max_rank <= 0:
        return {}
    entries = []
    with jieba_dict_path().open(encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                entries.append((int(parts[1]), parts[0].lower()))
    entries.sort(key=lambda e: -e[0])
    cutoff = entries[min(max_rank, len(entries)) - 1][0]
    out: dict[str, tuple[int, int]] = {}
    rank, prev = 0, None
    for i, (count, word) in enumerate(entries):
        if count < cutoff:
            break
        if count != prev:
            rank, prev = i + 1, count
        out.setdefault(word, (rank, count))
    return out


def placeholder_strings() -> frozenset[str]:
    """Every placeholder the PII and name redactors write, in every language."""
    from filters import pii

    out: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.add(v)
        elif isinstance(v, Mapping):
            for x in v.values():
                walk(x)

    walk(getattr(pii, "PLACEHOLDERS", {}))
    out.update(("<人名>", "<NAME>"))
    return frozenset(p for p in out if p)


def _normalise_word(w: str, t2s: Any) -> str:
    from filters.text import nfkc  # captions' own normalisation (CJK punctuation kept)

    w = nfkc(w).strip().lower()
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


def _share_reason(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return f"everyday word of this run: in {100 * v[1]:.2f}% of its captions ({v[0]:,})"
    return "exempted by the caller"


class Match(NamedTuple):
    start: int
    end: int  # exclusive
    word: str


class SensitiveMatcher:
    """`exempted` maps every entry left out by a hygiene rule to the reason (for reports);
    `words` is what is matched."""

    def __init__(self, words: Iterable[str], action: str = "mask", min_len: int = 2,
                 allowlist: Iterable[str] = (), zh_boundaries: bool = True,
                 zh_boundary_max_len: int = 2,
                 en_boundaries: bool = True, t2s: bool = True,
                 strict: Iterable[str] = (), common_rank: int | None = DEFAULT_COMMON_RANK,
                 exempt: Mapping[str, Any] | Iterable[str] = (),
                 protect: Iterable[str] | None = None):
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
        self.strict = frozenset(nw for w in strict if (nw := _normalise_word(w, conv)))
        common = common_words(common_rank) if common_rank else {}
        extra = {_normalise_word(w, conv): (exempt[w] if isinstance(exempt, Mapping) else None)
                 for w in exempt}
        self.dropped_short: list[str] = []
        self.exempted: dict[str, str] = {}
        kept: set[str] = set(self.strict)
        for w in words:
            nw = _normalise_word(w, conv)
            if not nw or nw in self.strict:
                continue
            if len(nw) < min_len:
                self.dropped_short.append(w)
            elif nw in allow:
                continue
            elif nw in common:
                rank, count = common[nw]
                self.exempted[nw] = f"everyday word: rank {rank:,} in jieba's dictionary (count {count:,})"
            elif nw in extra:
                self.exempted[nw] = _share_reason(extra[nw])
            else:
                kept.add(nw)
        self.words = frozenset(kept)
        self._auto = None
        if kept:
            ordered = sorted(kept)
            # Per-word facts are computed once here, not per hit. Only short words need the
            # boundary check: accidental hits inside ordinary text (马的 in 骑马的人, 一个, 女人)
            # are 2 characters; longer lexicon entries rarely occur by chance, and jieba often
            # splits such rare words differently (套路贷请).
            self._facts = [(w, 1 < len(w) <= zh_boundary_max_len and bool(lang_mod.HAN_RE.search(w)),
                            _is_ascii_alnum(w[0]), _is_ascii_alnum(w[-1])) for w in ordered]
            self._auto = ahocorasick_rs.AhoCorasick(ordered)
        self._allow_auto = _build(sorted(allow))
        self._protected_strings: frozenset[str] = frozenset()
        self._protect_auto = None
        self.protect_more(placeholder_strings() if protect is None else protect)

    def protect_more(self, strings: Iterable[str]) -> None:
        """Also never match into these strings (placeholders a custom redactor writes)."""
        new = self._protected_strings | {p.lower() for p in strings if p}
        if new != self._protected_strings:
            self._protected_strings = frozenset(new)
            self._protect_auto = _build(sorted(new))

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> "SensitiveMatcher":
        return cls(read_lexicon(path), **kw)

    def find(self, text: str) -> list[Match]:
        """All accepted matches (overlapping ones included), sorted by start."""
        if self._auto is None or not text:
            return []
        low = _lower_same_length(text)
        # (entry index, start, end) in characters, overlapping matches included.
        raw = self._auto.find_matches_as_indexes(low, overlapping=True)
        if not raw:
            return []
        protected: list[tuple[int, int]] = []
        if self._allow_auto is not None:
            protected = [(e + 1 - len(w), e + 1) for e, w in self._allow_auto.iter(low)]
        # Placeholders: a match touching one at all is dropped (not only one inside it).
        placeholders: list[tuple[int, int]] = []
        if self._protect_auto is not None and "<" in low:
            placeholders = [(e + 1 - len(w), e + 1) for e, w in self._protect_auto.iter(low)]
        bounds: set[int] | None = None
        n = len(low)
        check_en = self.en_boundaries
        check_zh = self.zh_boundaries
        out = []
        facts = self._facts
        for idx, s, e in raw:
            w, han_multi, alnum_start, alnum_end = facts[idx]
            if check_en and ((alnum_start and s > 0 and _is_ascii_alnum(low[s - 1]))
                             or (alnum_end and e < n and _is_ascii_alnum(low[e]))):
                continue
            if protected and any(ps <= s and e <= pe for ps, pe in protected):
                continue
            if placeholders and any(s < pe and ps < e for ps, pe in placeholders):
                continue
            if check_zh and han_multi:
                if bounds is None:
                    # Offsets between jieba tokens (0 and len included); segment() is cached and
                    # the word count reuses it.
                    bounds = set(accumulate(map(len, lang_mod.segment(text)), initial=0))
                if s not in bounds or e not in bounds:
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


def measure_shares(matcher: SensitiveMatcher, texts: Iterable[str]) -> tuple[int, Counter[str]]:
    """(number of texts, entry -> texts it is found in). Streams: memory is one counter entry
    per lexicon entry found, whatever the number of texts."""
    per: Counter[str] = Counter()
    n = 0
    for t in texts:
        n += 1
        found = matcher.find(t)
        if found:
            per.update({m.word for m in found})
    return n, per


def share_exemptions(counts: Mapping[str, int], n: int, max_share: float | None,
                     min_hits: int = SHARE_MIN_HITS,
                     strict: Iterable[str] = ()) -> dict[str, tuple[int, float]]:
    """Entries found in more than `max_share` of `n` texts (and in at least `min_hits` of them):
    entry -> (texts, share), most frequent first. Strict entries are never exempted."""
    if max_share is None or n <= 0:
        return {}
    strict = set(strict)
    out = {w: (c, round(c / n, 6)) for w, c in counts.items()
           if c >= min_hits and c / n > max_share and w not in strict}
    return dict(sorted(out.items(), key=lambda kv: (-kv[1][0], kv[0])))


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
    # What the hygiene defaults leave out, and why; hit counts above are after them.
    exempt_common: list[dict[str, Any]] = field(default_factory=list)  # word, rank, count
    exempt_share: list[dict[str, Any]] = field(default_factory=list)  # word, captions, share
    n_hit_captions_raw: int = 0  # captions hit with no exemption at all
    n_strict: int = 0

    def format(self) -> str:
        lines = [
            f"lexicon: {self.n_lexicon} entries, {self.n_used} used "
            f"({self.n_dropped_short} shorter than min_len dropped, {len(self.exempt_common)} everyday "
            f"words and {len(self.exempt_share)} frequent in this sample exempted, {self.n_strict} strict)",
            f"captions: {self.n_captions}, hit: {self.n_hit_captions} "
            f"({100 * self.hit_rate:.2f}%), distinct words hit: {self.n_words_hit}; "
            f"without the exemptions: {self.n_hit_captions_raw} "
            f"({100 * self.n_hit_captions_raw / max(1, self.n_captions):.2f}%)",
        ]
        if self.exempt_common:
            lines.append(f"exempt as everyday words (among the most frequent entries of jieba's "
                         f"dictionary; force one with sensitive_strict): {len(self.exempt_common)}")
            for e in self.exempt_common:
                lines.append(f"  {e['word']}: rank {e['rank']:,}, count {e['count']:,}")
        if self.exempt_share:
            lines.append("exempt as frequent in this sample (share of captions above sensitive_max_share):")
            for e in self.exempt_share:
                lines.append(f"  {e['word']}: {e['captions']:,} captions ({100 * e['share']:.2f}%)")
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
                  zh_boundaries: bool = True, normalize: bool = True,
                  strict: Iterable[str] = (), common_rank: int | None = DEFAULT_COMMON_RANK,
                  max_share: float | None = DEFAULT_MAX_SHARE,
                  min_share_hits: int = SHARE_MIN_HITS) -> AuditReport:
    """How a lexicon behaves on a caption sample with the hygiene defaults: which entries are
    exempted and why (everyday word by jieba's counts; frequent in the sample itself), then the
    share of captions still hit and the words that hit most."""
    strict = list(strict)
    base = SensitiveMatcher(words, action="tag", min_len=min_len, allowlist=allowlist,
                            zh_boundaries=zh_boundaries, strict=strict, common_rank=None)
    common = common_words(common_rank) if common_rank else {}
    exempt_common = sorted(({"word": w, "rank": common[w][0], "count": common[w][1]}
                            for w in base.words if w in common and w not in base.strict),
                           key=lambda e: (e["rank"], e["word"]))
    norm = None
    if normalize:
        from filters.text import decode_caption, normalize_text

        norm = lambda c: normalize_text(decode_caption(c)[0])  # noqa: E731
    # One pass over the sample with every entry; exemptions are then applied to the counts.
    per_caption: list[frozenset[str]] = []
    examples: dict[str, list[str]] = {}
    raw_counts: Counter[str] = Counter()
    n = 0
    for c in captions:
        text = norm(c) if norm else (c or "")
        n += 1
        found = frozenset(m.word for m in base.find(text))
        if found:
            per_caption.append(found)
            raw_counts.update(found)
            for w in found:
                ex = examples.setdefault(w, [])
                if len(ex) < 3:
                    ex.append(text[:80])
    out_common = {e["word"] for e in exempt_common}
    shares = share_exemptions({w: k for w, k in raw_counts.items() if w not in out_common}, n,
                              max_share, min_share_hits, base.strict)
    dropped = out_common | set(shares)
    per_word: Counter[str] = Counter()
    hit = 0
    for found in per_caption:
        kept = found - dropped
        if kept:
            hit += 1
            per_word.update(kept)
    rate = hit / n if n else 0.0
    return AuditReport(
        n_lexicon=len(words), n_used=len(base.words) - len(dropped),
        n_dropped_short=len(base.dropped_short), n_captions=n, n_hit_captions=hit, hit_rate=rate,
        top_words=per_word.most_common(top), n_words_hit=len(per_word), warn=rate > warn_rate,
        warn_rate=warn_rate, examples={w: v for w, v in examples.items() if w in per_word},
        exempt_common=exempt_common,
        exempt_share=[{"word": w, "captions": k, "share": sh} for w, (k, sh) in shares.items()],
        n_hit_captions_raw=len(per_caption), n_strict=len(base.strict))
