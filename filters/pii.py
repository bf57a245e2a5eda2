"""PII detection and redaction to typed placeholders.

Patterns run in a fixed order on the caption, each on the output of the previous one, so a
span is redacted once: URL, email, resident ID (checksum-validated), bank card (Luhn), phone
(Chinese mobile and landline in the usual written forms, North American numbers), IPv4.
Placeholders carry no digits, so a later pattern can never match inside an earlier one's output.

Digit-run guards: every numeric pattern refuses to start or end inside a longer digit run
(lookarounds on digits and on "digit-dash"), so 11 digits inside an order number are not a phone.
Captions without a digit, '@', "www." or "http" skip every pattern (most captions).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

PII_TYPES: tuple[str, ...] = ("phone", "email", "id", "card", "ip", "url", "name")

PLACEHOLDERS: dict[str, dict[str, str]] = {
    "zh": {"phone": "<手机号>", "landline": "<电话>", "email": "<邮箱>", "id": "<身份证号>",
           "card": "<银行卡号>", "ip": "<IP>", "url": "<网址>", "name": "<人名>"},
    "en": {"phone": "<PHONE>", "landline": "<PHONE>", "email": "<EMAIL>", "id": "<ID>",
           "card": "<CARD>", "ip": "<IP>", "url": "<URL>", "name": "<NAME>"},
}

_PREFILTER = re.compile(r"[0-9@]|www\.|https?:", re.IGNORECASE)

# Not preceded by a digit or "digit + separator", not followed by one: keeps numbers that are
# part of a longer digit run (order ids, barcodes) out.
_NB = r"(?<!\d)(?<!\d[-.])"
_NA = r"(?!\d)(?![-.]\d)"

URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>\"'，。！？、；：（）【】「」《》)\]]*"
                    r"[^\s<>\"'，。！？、；：（）【】「」《》)\].,;:!?]", re.IGNORECASE)
EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z])")
ID_RE = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])")
CARD_RE = re.compile(r"(?<!\+)" + _NB + r"(?:\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?|\d{13,19})" + _NA)
MOBILE_RE = re.compile(
    r"(?<![\d+])(?<!\d[-.])(?:(?:\+|00)86[\s-]?|[(（]\+?86[)）]\s?)?"
    r"1[3-9]\d(?:[\s-]?\d{4}){2}" + _NA)
LANDLINE_RE = re.compile(
    r"(?<![\d+])(?<!\d[-.])(?:(?:\+|00)86[\s-]?)?(?:[(（]0\d{2,3}[)）]\s?|0\d{2,3}[\s-]?)"
    r"[1-9]\d{2,3}[\s-]?\d{4}(?:[\s-]?(?:转|ext\.?|x)\s?\d{1,5})?" + _NA, re.IGNORECASE)
NANP_RE = re.compile(_NB + r"(?<!\+)(?:\+?1[\s.-]?)?(?:\([2-9]\d{2}\)\s?|[2-9]\d{2}[\s.-])\d{3}[\s.-]\d{4}" + _NA)
IPV4_RE = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_resident_id(s: str) -> bool:
    """18-digit PRC resident ID checksum (ISO 7064 MOD 11-2); last character may be X."""
    if len(s) != 18 or not s[:17].isdigit():
        return False
    total = sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == s[17].upper()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


# An international-prefixed mobile written without separators is 13-15 digits and passes Luhn
# one time in ten: it is a phone, not a card.
_PREFIXED_MOBILE = re.compile(r"(?:0086|86)1[3-9]\d{9}")


def _valid_card(s: str) -> bool:
    d = _digits(s)
    return 13 <= len(d) <= 19 and luhn_ok(d) and not _PREFIXED_MOBILE.fullmatch(d)


class PiiRedactor:
    """`redact(text, lang)` -> (text with placeholders, {type: count}). Thread-safe."""

    def __init__(self, types: Iterable[str] = ("url", "email", "id", "card", "phone", "ip"),
                 placeholders: dict[str, dict[str, str]] | None = None):
        unknown = set(types) - set(PII_TYPES)
        if unknown:
            raise ValueError(f"unknown PII types {sorted(unknown)}; known: {PII_TYPES}")
        self.types = tuple(types)
        self.placeholders = placeholders or PLACEHOLDERS
        steps: list[tuple[str, str, re.Pattern[str], Callable[[str], bool] | None]] = []
        if "url" in self.types:
            steps.append(("url", "url", URL_RE, None))
        if "email" in self.types:
            steps.append(("email", "email", EMAIL_RE, None))
        if "id" in self.types:
            steps.append(("id", "id", ID_RE, valid_resident_id))
        if "card" in self.types:
            steps.append(("card", "card", CARD_RE, _valid_card))
        if "phone" in self.types:
            steps.append(("phone", "phone", MOBILE_RE, None))
            steps.append(("phone", "landline", LANDLINE_RE, None))
            steps.append(("phone", "phone", NANP_RE, None))
        if "ip" in self.types:
            steps.append(("ip", "ip", IPV4_RE, None))
        self._steps = steps

    def find(self, text: str) -> list[tuple[str, str]]:
        """(type, matched text) for every redaction `redact` would make, in order of the rules."""
        found: list[tuple[str, str]] = []
        self._run(text, "en", found)
        return found

    def redact(self, text: str, lang: str = "en") -> tuple[str, dict[str, int]]:
        found: list[tuple[str, str]] = []
        out = self._run(text, lang, found)
        counts: dict[str, int] = {}
        for t, _ in found:
            counts[t] = counts.get(t, 0) + 1
        return out, counts

    def _run(self, text: str, lang: str, found: list[tuple[str, str]]) -> str:
        if not text or not _PREFILTER.search(text):
            return text
        ph = self.placeholders["zh" if lang == "zh" else "en"]
        for typ, sub, rx, check in self._steps:
            def repl(m: re.Match[str], typ: str = typ, sub: str = sub,
                     check: Callable[[str], bool] | None = check) -> str:
                s = m.group(0)
                if check is not None and not check(s):
                    return s
                found.append((typ, s))
                return ph[sub]
            text = rx.sub(repl, text)
        return text

    def redact_batch(self, texts: Iterable[str], langs: Iterable[str] | None = None) -> dict[str, list[Any]]:
        cols: dict[str, list[Any]] = {"text": [], **{f"pii_{t}": [] for t in PII_TYPES}}
        texts = list(texts)
        lang_list = list(langs) if langs is not None else ["en"] * len(texts)
        for t, lg in zip(texts, lang_list):
            new, counts = self.redact(t, lg)
            cols["text"].append(new)
            for typ in PII_TYPES:
                cols[f"pii_{typ}"].append(counts.get(typ, 0))
        return cols
