"""PII detection and redaction to typed placeholders in the caption's language.

Rules run in a fixed order on the caption, each on the output of the previous one, so a span is
redacted once: URL, email, resident ID (checksum-validated), bank card (Luhn), phone, IPv4.
Placeholders carry no digits, so a later rule can never match inside an earlier one's output.

Phones: a permissive scan finds runs of digits with the separators people write (spaces,
dashes, dots, parentheses, a leading `+` or `00`); libphonenumber's metadata (`phonenumbers`)
then decides. A number with a country code is checked against that country; one without is
tried in each of the expected regions (`regions`, default mainland China, Hong Kong, Macau,
Taiwan and the US), and a run written with a bare country code (`852 6123 4567`, `(886) ...`)
is accepted when that code belongs to an expected region. An extension (`转 8001`, `分机`,
`#51`, `ext. 12`, `x12`) is part of the redacted span.

Numbers that only look like PII are left alone: ISBN-10/13, EAN-13 and UPC-A codes
(checksum-valid by `python-stdnum`, unless a phone word such as 电话/tel precedes them),
numbers introduced by a product/version/price word (ISBN, SKU, model, 型号, version, build,
APK, ¥...), dates, version strings and prices. An ISBN-13/EAN-13 is never a bank card, and
four dotted octets are an IP address only outside a version context (`v1.0.1.0`, `APK 3.7.5.8`).

Digit-run guards: no rule starts or ends inside a longer digit run, so 11 digits inside an order
number are not a phone. Captions without a digit, '@', "www." or "http" skip every rule.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, Literal

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType
from stdnum import ean as _ean
from stdnum import isbn as _isbn

PII_TYPES: tuple[str, ...] = ("phone", "email", "id", "card", "ip", "url", "name")
PII_ACTIONS: tuple[str, ...] = ("placeholder", "remove", "reject")
PiiAction = Literal["placeholder", "remove", "reject"]
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("CN", "HK", "MO", "TW", "US")

# Every placeholder is written in its caption's language: a Chinese caption never gets a Latin one.
PLACEHOLDERS: dict[str, dict[str, str]] = {
    "zh": {"phone": "<手机号>", "landline": "<电话>", "email": "<邮箱>", "id": "<身份证号>",
           "card": "<银行卡号>", "ip": "<IP地址>", "url": "<网址>", "name": "<人名>"},
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
IPV4_RE = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)")

# Phone pre-scan: at least 7 digits joined by at most 3 separator characters each. It rejects
# captions with short numbers inside the regex engine, before any Python runs.
_SEP = r"[ \-.()（）\u00a0\u3000]"
PHONE_SCAN_RE = re.compile(
    r"(?<![A-Za-z0-9_+＋#$¥￥€£])(?<!\d[-.,:/])"
    r"(?:[+＋]\s?|[(（]\s?[+＋]?)?\d(?:" + _SEP + r"{0,3}\d){6,}[)）]?")
_EXT_RE = re.compile(r"[ \u00a0]?[,，]?[ \u00a0]?(?:转|轉|分机|分機|内线|ext\.?|x|#|＃)[ \u00a0]?\d{1,6}(?!\d)",
                     re.IGNORECASE)
_TOKEN_RE = re.compile(r"\S+")

# A phone word shortly before or after a number: it beats the checksum test for barcodes, a
# compact date, and lets a bare 8- or 10-digit national number count.
_PHONE_CUE_RE = re.compile(
    r"(?<![A-Za-z])(?:tel|phone|call|mobile|mob\b|cell|fax|whats\s?app|wechat|line\b|hotline|contact|sms|"
    r"电话|電話|手机|手機|热线|熱線|致电|致電|来电|來電|联系|聯繫|联络|聯絡|咨询|諮詢|查询|查詢|"
    r"订座|訂座|订位|訂位|预约|預約|微信|传真|傳真|专线|專線|留言|短信|简讯|簡訊|"
    r"先生|小姐|女士|师傅|師傅|经理|經理|ring|dial|text\b|reach|enquir|inquir|☎|📞|📱)", re.IGNORECASE)
# A product/version/price word right before a number: what follows is not a phone.
_LOOKALIKE_BEFORE_RE = re.compile(
    r"(?<![A-Za-z])(?:isbn(?:-?1[03])?|e?ean(?:-?13|-?8)?|upc(?:-?a)?|gtin|barcode|bar\s?code|sku|item|model|"
    r"part|p/n|s/n|serial|ref|order|invoice|article|art\.|cat\.|catalog(?:ue)?|lot|batch|"
    r"version|ver\.?|build|apk|series|firmware|release|rev\.?|v|"
    r"条码|條碼|条形码|條形碼|书号|書號|型号|型號|货号|貨號|编号|編號|订单|訂單|单号|單號|序列号|序號|"
    r"批号|批號|版本|价格|價格|售价|售價|原价|原價|"
    r"rmb|usd|hkd|twd|mop|cny|nt\$|hk\$|us\$|mop\$|\$|¥|￥|€|£)"
    r"[\s.-]*(?:#|no\.?|nr\.?|number|code|号|號)?\s*[:：#]?\s*[(（]?$", re.IGNORECASE)
_LOOKALIKE_AFTER_RE = re.compile(
    r"\s?(?:元|块|塊|圆|圓|万|萬|亿|億|円|美元|港元|港币|港幣|台币|台幣|澳门币|澳門幣|%|％|"
    r"rmb|usd|hkd|twd|cny|yuan|dollars?)|[-]?[A-Za-z]", re.IGNORECASE)
_DATE_RE = re.compile(
    r"(?:19|20)\d\d([-./ ]?)(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])([-./])(?:0?[1-9]|1[0-2])\2(?:19|20)\d\d"
    r"|(?:0?[1-9]|1[0-2])([-./])(?:0?[1-9]|[12]\d|3[01])\3(?:19|20)\d\d")
# How barcodes are printed: compact, UPC-A `0 36000 29145 2`, EAN-13 `6 901234 567892`.
_CODE_GROUPING_RE = re.compile(r"\d+|\d \d{5} \d{5} \d|\d[ -]\d{6}[ -]\d{6}")
_US_SHAPE_RE = re.compile(r"(?:1[ -.]?)?(?:\(\d{3}\)\s?|\d{3}[-.])\d{3}[-.]\d{4}")
_VERSION_AFTER_RE = re.compile(r"\s*(?:release|build|update|patch|version|版本|更新)", re.IGNORECASE)
# Version context before four dotted numbers (`v1.0.1.0`, `APK 3.7.5.8`, `build 10.0.19041.1`).
_VERSION_BEFORE_RE = re.compile(
    r"(?<![A-Za-z])(?:v|ver\.?|version|build|apk|series|firmware|fw|release|rev\.?|update|patch|版本|固件|"
    r"系统|系統|更新)\s*[:：]?\s*$", re.IGNORECASE)

_MOBILE_TYPES = {PhoneNumberType.MOBILE}

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


_NON_DIGIT_RE = re.compile(r"\D+")


def _digits(s: str) -> str:
    return _NON_DIGIT_RE.sub("", s)


# An international-prefixed mobile written without separators is 13-15 digits and passes Luhn
# one time in ten: it is a phone, not a card.
_PREFIXED_MOBILE = re.compile(r"(?:0086|86)1[3-9]\d{9}")


def _valid_card(s: str) -> bool:
    d = _digits(s)
    # No card number starts with 0 (ISO/IEC 7812 reserves it); 00... is an international call.
    if not (13 <= len(d) <= 19 and d[0] != "0" and luhn_ok(d)) or _PREFIXED_MOBILE.fullmatch(d):
        return False
    # One in ten checksum-valid EAN-13/ISBN-13 codes also passes Luhn.
    return not (len(d) == 13 and _ean.is_valid(d))


def is_barcode(digits: str) -> bool:
    """ISBN-10, UPC-A (12), EAN-13/ISBN-13 with a valid check digit (python-stdnum)."""
    n = len(digits)
    if n == 10:
        return _isbn.is_valid(digits)
    return n in (12, 13) and _ean.is_valid(digits)


def _written_as_code(span: str, d: str) -> bool:
    """`span` is printed the way its checksum-valid barcode/ISBN would be."""
    if not is_barcode(d):
        return False
    if _CODE_GROUPING_RE.fullmatch(span):
        return True
    return len(d) in (10, 13) and span == _isbn.format(d)


Typed = tuple[phonenumbers.PhoneNumber, int]


def _typed(n: phonenumbers.PhoneNumber) -> Typed | None:
    """(n, type) when n is valid. number_type() is what is_valid_number() computes (a type other
    than UNKNOWN for the number's region), so asking once gives both."""
    t = phonenumbers.number_type(n)
    return None if t == PhoneNumberType.UNKNOWN else (n, t)


def _check_regions(regions: Iterable[str]) -> tuple[str, ...]:
    out = tuple(r.upper() for r in regions)
    bad = [r for r in out if r not in phonenumbers.SUPPORTED_REGIONS]
    if bad:
        raise ValueError(f"unknown phone regions {bad}: use ISO 3166 two-letter codes that "
                         f"libphonenumber knows, e.g. CN, HK, MO, TW, US")
    return out


class PhoneFinder:
    """Spans of phone numbers in a text, confirmed by libphonenumber."""

    def __init__(self, regions: Sequence[str] = DEFAULT_PHONE_REGIONS, bare: bool = False):
        self.regions = _check_regions(regions)
        self.bare = bare
        self._codes = {str(phonenumbers.country_code_for_region(r)) for r in self.regions}
        meta = {r: phonenumbers.PhoneMetadata.metadata_for_region(r) for r in self.regions}
        self._meta = {r: (m.country_code, m.national_prefix, m.national_prefix_for_parsing)
                      for r, m in meta.items()}
        self._trunk0 = {r for r, m in meta.items() if m.national_prefix == "0"}

    def parse(self, s: str) -> Typed | None:
        """(number, libphonenumber type) of the valid number written as `s` (no extension)."""
        d = _digits(s)
        head = s.lstrip("(（ \u00a0")
        if head[:1] in "+＋" or (d.startswith("00") and not d.startswith("000")):
            return self._international(d[2:] if d.startswith("00") else d)
        # Written the national way: `5551234567` reads as a Chinese landline with its trunk 0
        # left out, which nobody writes; only mobiles go without it where the trunk prefix is 0.
        for r in self.regions:
            n = self._national(d, r)
            if n is not None and (d[0] == "0" or r not in self._trunk0 or n[1] in _MOBILE_TYPES):
                return n
        # A country code written without `+`: `852 6123 4567`, `(886) 2 2752 1874`.
        if any(d.startswith(c) for c in self._codes):
            n = self._international(d)
            if n is not None and phonenumbers.region_code_for_number(n[0]) in self.regions:
                return n
        return None

    # libphonenumber's parse() costs ~30 us of string handling per call; building the number
    # from its digits and asking is_valid_number() costs ~5 us. parse() still handles what the
    # shortcut does not: leading zeros kept in the national number, carrier-code prefixes.
    @staticmethod
    def _from_nsn(cc: int, nsn: str) -> Typed | None:
        if not nsn or nsn[0] == "0" or len(nsn) > 17:
            return None
        return _typed(phonenumbers.PhoneNumber(country_code=cc, national_number=int(nsn)))

    def _national(self, d: str, region: str) -> Typed | None:
        cc, prefix, for_parsing = self._meta[region]
        if prefix and d.startswith(prefix):
            n = self._from_nsn(cc, d[len(prefix):])
            if n is not None:
                return n
        n = self._from_nsn(cc, d)
        if n is None and for_parsing and for_parsing != prefix:
            return self._valid(d, region)
        return n

    def _international(self, d: str) -> Typed | None:
        for k in (1, 2, 3):
            cc = int(d[:k] or 0)
            if cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
                return self._from_nsn(cc, d[k:]) or self._valid("+" + d, None)
        return None

    @staticmethod
    def _valid(s: str, region: str | None) -> Typed | None:
        try:
            n = phonenumbers.parse(s, region)
        except NumberParseException:
            return None
        return _typed(n)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, "phone" | "landline") for each number, extension included."""
        out: list[tuple[int, int, str]] = []
        for m in PHONE_SCAN_RE.finditer(text):
            base = m.start()
            cand = m.group(0)
            whole = _balance(cand, 0, len(cand))
            if self._code_not_phone(text, base + whole[0], base + whole[1]):
                continue
            toks = [(t.start(), t.end()) for t in _TOKEN_RE.finditer(cand)]
            i = 0
            while i < len(toks):
                hit = None
                for j in range(len(toks) - 1, i - 1, -1):
                    s, e = _balance(cand, toks[i][0], toks[j][1])
                    nd = sum(c.isdigit() for c in cand[s:e])
                    if nd > 17:
                        continue
                    if nd < 7:
                        break
                    kind = self._judge(text, base + s, base + e)
                    if kind is not None:
                        # A last group of one or two digits may be a count after the number
                        # ("2123 4567 24小时"): when the number stands without it, leave it out.
                        if j > i and sum(c.isdigit() for c in cand[toks[j][0]:toks[j][1]]) < 3:
                            s2, e2 = _balance(cand, toks[i][0], toks[j - 1][1])
                            kind2 = self._judge(text, base + s2, base + e2)
                            if kind2 is not None:
                                s, e, kind, j = s2, e2, kind2, j - 1
                        hit = (base + s, base + e, kind)
                        i = j + 1
                        break
                if hit is None:
                    i += 1
                    continue
                s, e, kind = hit
                x = _EXT_RE.match(text, e)
                if x is not None:
                    e = x.end()
                out.append((s, e, kind))
        return out

    def _judge(self, text: str, s: int, e: int) -> str | None:
        span = text[s:e]
        before = text[max(0, s - 24):s]
        if _LOOKALIKE_BEFORE_RE.search(before):
            return None
        if not _EXT_RE.match(text, e) and _LOOKALIKE_AFTER_RE.match(text, e):
            return None
        d = _digits(span)
        head = span.lstrip("(（ \u00a0")
        intl = head[:1] in "+＋" or (d.startswith("00") and not d.startswith("000"))
        cue = False
        if not intl:
            if span.count(".") >= 3:
                return None
            cue = self._cue(text, s, e)
            # A compact yyyymmdd after a phone word is a phone (Hong Kong 2xxx xxxx).
            if _DATE_RE.fullmatch(span) and (not cue or not span.isdigit()):
                return None
            if self._code_not_phone(text, s, e, cue):
                return None
        n = self.parse(span)
        if n is None:
            return "landline" if cue and self._old_plan(d) else None
        # 8-digit Hong Kong/Macau and 10-digit US numbers written compactly or with dashes are
        # every other SKU or part number too: without a phone word nearby they stay. Trunk-0
        # landlines, mainland mobiles, country codes and phone groupings (`6123 4567`,
        # `(2821)2345`, `(201) 555-0123`, `201-555-0123`) speak for themselves.
        if not self.bare and not intl and not cue and not d.startswith("0") and not _EXT_RE.match(text, e) \
                and not (n[0].country_code == 86 and len(d) == 11 and d[0] == "1") \
                and not d.startswith(str(n[0].country_code)) and not _phone_grouped(span):
            return None
        return "phone" if n[1] in _MOBILE_TYPES else "landline"

    def _old_plan(self, d: str) -> bool:
        """A trunk-0 landline one digit short of today's plan (Changsha went from 7 to 8 local
        digits in 2008): still someone's number when a phone word names it."""
        if not (d.startswith("0") and 9 <= len(d) <= 11):
            return False
        return any(self._from_nsn(self._meta[r][0], d[1:] + x) is not None
                   for r in self._trunk0 for x in "2345678")

    @staticmethod
    def _cue(text: str, s: int, e: int) -> bool:
        return _PHONE_CUE_RE.search(text, max(0, s - 24), s) is not None or \
            _PHONE_CUE_RE.search(text, e, e + 12) is not None

    def _code_not_phone(self, text: str, s: int, e: int, cue: bool | None = None) -> bool:
        """The span is printed as a checksum-valid ISBN/EAN/UPC and no phone word says otherwise."""
        span = text[s:e]
        d = _digits(span)
        if len(d) not in (10, 12, 13) or span.lstrip("(（ ")[:1] in "+＋" or not _written_as_code(span, d):
            return False
        if len(d) == 13 and d[:3] in ("978", "979"):
            return True
        if cue is None:
            cue = self._cue(text, s, e)
        return not cue and not (len(d) == 13 and self._prefixed_valid(d))

    def _prefixed_valid(self, d: str) -> bool:
        n = self._international(d)
        return n is not None and phonenumbers.region_code_for_number(n[0]) in self.regions


def _phone_grouped(span: str) -> bool:
    """Spaced groups or a parenthesised area code: how phones are printed, not part numbers."""
    return "(" in span or "（" in span or (" " in span and "-" not in span) \
        or _US_SHAPE_RE.fullmatch(span) is not None


def _balance(cand: str, s: int, e: int) -> tuple[int, int]:
    """Trim separators and unmatched parentheses from the ends of cand[s:e]."""
    while e > s and cand[e - 1] in " -.\u00a0\u3000":
        e -= 1
    while s < e and cand[s] in " -.\u00a0\u3000":
        s += 1
    span = cand[s:e]
    opens = span.count("(") + span.count("（")
    closes = span.count(")") + span.count("）")
    while closes > opens and e > s and cand[e - 1] in ")）":
        e -= 1
        closes -= 1
    while opens > closes and s < e and cand[s] in "(（":
        s += 1
        opens -= 1
    return s, e


def _ip_ok(m: re.Match[str]) -> bool:
    s = m.start()
    text = m.string
    if s and (text[s - 1].isalpha() or text[s - 1] in "_-"):
        return False
    if _VERSION_BEFORE_RE.search(text[max(0, s - 16):s]):
        return False
    if _VERSION_AFTER_RE.match(text, m.end()):
        return False
    return not re.match(r"\.?[A-Za-z]", text[m.end():m.end() + 2])


class PiiRedactor:
    """`redact(text, lang)` -> (text with placeholders, {type: count}). Thread-safe.

    `action`: "placeholder" puts a typed placeholder in the caption's language; "remove" deletes
    the span; "reject" also puts placeholders in (nothing leaks downstream) and leaves it to
    select to reject the row (reason `pii_caption`) from the counts.
    """

    def __init__(self, types: Iterable[str] = ("url", "email", "id", "card", "phone", "ip"),
                 placeholders: dict[str, dict[str, str]] | None = None,
                 regions: Sequence[str] = DEFAULT_PHONE_REGIONS, action: PiiAction = "placeholder",
                 bare_phones: bool = False):
        unknown = set(types) - set(PII_TYPES)
        if unknown:
            raise ValueError(f"unknown PII types {sorted(unknown)}; known: {PII_TYPES}")
        if action not in PII_ACTIONS:
            raise ValueError(f"unknown PII action {action!r}; known: {PII_ACTIONS}")
        self.types = tuple(types)
        self.action = action
        self.placeholders = placeholders or PLACEHOLDERS
        self.phones = PhoneFinder(regions, bare=bare_phones)
        steps: list[tuple[str, str, re.Pattern[str], Callable[[re.Match[str]], bool] | None]] = []
        if "url" in self.types:
            steps.append(("url", "url", URL_RE, None))
        if "email" in self.types:
            steps.append(("email", "email", EMAIL_RE, None))
        if "id" in self.types:
            steps.append(("id", "id", ID_RE, lambda m: valid_resident_id(m.group(0))))
        if "card" in self.types:
            steps.append(("card", "card", CARD_RE, lambda m: _valid_card(m.group(0))))
        if "phone" in self.types:
            steps.append(("phone", "phone", PHONE_SCAN_RE, None))
        if "ip" in self.types:
            steps.append(("ip", "ip", IPV4_RE, _ip_ok))
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
        remove = self.action == "remove"
        n0 = len(found)
        for typ, sub, rx, check in self._steps:
            if rx is PHONE_SCAN_RE:
                text = self._phones(text, ph, found, remove)
                continue

            def repl(m: re.Match[str], typ: str = typ, sub: str = sub,
                     check: Callable[[re.Match[str]], bool] | None = check) -> str:
                if check is not None and not check(m):
                    return m.group(0)
                found.append((typ, m.group(0)))
                return "\x00" if remove else ph[sub]
            text = rx.sub(repl, text)
        if remove and len(found) > n0:
            text = _tidy_removed(text)
        return text

    def _phones(self, text: str, ph: dict[str, str], found: list[tuple[str, str]], remove: bool) -> str:
        spans = self.phones.find(text)
        if not spans:
            return text
        parts, last = [], 0
        for s, e, kind in spans:
            parts.append(text[last:s])
            parts.append("\x00" if remove else ph[kind])
            found.append(("phone", text[s:e]))
            last = e
        parts.append(text[last:])
        return "".join(parts)

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


_REMOVED_RE = re.compile(r"[ \t]*\x00(?:[ \t]*\x00)*[ \t]*")


def _tidy_removed(text: str) -> str:
    """Drop removal marks; one space stays where the removed span stood between spaced words."""
    def join(m: re.Match[str]) -> str:
        inside = m.start() > 0 and m.end() < len(m.string)
        return " " if inside and (" " in m.group(0) or "\t" in m.group(0)) else ""
    return _REMOVED_RE.sub(join, text).strip()


@lru_cache(maxsize=8)
def _redactor(regions: tuple[str, ...], action: str) -> PiiRedactor:
    return PiiRedactor(regions=regions, action=action)  # type: ignore[arg-type]


def redact_pii(text: str, lang: str = "en", regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
               action: PiiAction = "placeholder") -> tuple[str, dict[str, int]]:
    """One caption with the default rule set; see PiiRedactor."""
    return _redactor(tuple(regions), action).redact(text, lang)
