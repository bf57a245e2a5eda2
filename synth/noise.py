"""Web noise: its rates, and the text kinds of it (alt-text junk, boilerplate, sensitive words).

Rates are fractions of all rows. Three groups:

* served faults (what the URL returns; at most one per row): tiny ... timeout;
* caption content (at most one per row): mismatched, wrong_attribute, uninformative;
* caption add-ons (each independent, so they stack): boilerplate, traditional, pii, sensitive.
"""
from __future__ import annotations

import hashlib
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

SERVED_FAULTS = ("tiny", "extreme_aspect", "exact_dup", "near_dup", "corrupt", "truncated",
                 "html", "http_404", "http_500", "slow", "timeout")
CAPTION_CONTENT = ("mismatched", "wrong_attribute", "uninformative")
CAPTION_ADDONS = ("boilerplate", "traditional", "pii", "sensitive")

# Primary label = the first of a row's labels in this order: what a pipeline hits first
# (no bytes, then bad bytes, then bad captions); `slow` rows still download fine, so it ranks
# last.
LABEL_PRIORITY = ("http_404", "http_500", "timeout", "html", "corrupt", "truncated", "tiny",
                  "extreme_aspect", "exact_dup", "near_dup", "mismatched", "wrong_attribute",
                  "uninformative", "pii", "sensitive", "traditional", "boilerplate", "slow")
ALL_LABELS = ("clean",) + LABEL_PRIORITY

# Rows whose response carries no image of a scene.
NO_IMAGE = frozenset({"http_404", "http_500", "html", "corrupt"})


class NoiseRates(BaseModel):
    """How much of each kind of web noise the corpus gets (fractions of all rows), plus the
    delays the server applies to slow and timed-out URLs. The defaults leave about 45% of rows
    clean."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    tiny: float = Field(0.02, ge=0, le=1)
    extreme_aspect: float = Field(0.02, ge=0, le=1)
    exact_dup: float = Field(0.05, ge=0, le=1)
    near_dup: float = Field(0.05, ge=0, le=1)
    corrupt: float = Field(0.015, ge=0, le=1)
    truncated: float = Field(0.015, ge=0, le=1)
    html: float = Field(0.015, ge=0, le=1)
    http_404: float = Field(0.03, ge=0, le=1)
    http_500: float = Field(0.015, ge=0, le=1)
    slow: float = Field(0.02, ge=0, le=1)
    timeout: float = Field(0.005, ge=0, le=1)

    mismatched: float = Field(0.08, ge=0, le=1)
    wrong_attribute: float = Field(0.06, ge=0, le=1)
    uninformative: float = Field(0.06, ge=0, le=1)

    boilerplate: float = Field(0.06, ge=0, le=1)
    traditional: float = Field(0.05, ge=0, le=1)
    pii: float = Field(0.08, ge=0, le=1)
    sensitive: float = Field(0.04, ge=0, le=1)

    # Fraction of rows with Chinese captions (the rest are English).
    zh_fraction: float = Field(0.5, ge=0, le=1)
    # Seconds the server waits before answering: slow stays under a downloader's timeout
    # (img2dataset's default is 10 s), timeout goes far beyond it.
    slow_delay: float = Field(2.0, ge=0)
    timeout_delay: float = Field(20.0, ge=0)

    RATE_NAMES: ClassVar[tuple[str, ...]] = SERVED_FAULTS + CAPTION_CONTENT + CAPTION_ADDONS

    @model_validator(mode="after")
    def _groups_fit(self) -> "NoiseRates":
        for group in (SERVED_FAULTS, CAPTION_CONTENT):
            total = sum(getattr(self, k) for k in group)
            if total > 1 + 1e-9:
                raise ValueError(f"rates of {', '.join(group)} add up to {total:.3f}; "
                                 "at most one of them applies to a row, so keep the sum <= 1")
        return self

    @classmethod
    def none(cls) -> "NoiseRates":
        """No noise at all: every row is a clean, correctly captioned image."""
        return cls(**{k: 0.0 for k in cls.RATE_NAMES})

    def override(self, assignments: list[str] | dict[str, float]) -> "NoiseRates":
        """A copy with some fields changed, from a dict or from "name=value" strings (CLI)."""
        if isinstance(assignments, dict):
            values = dict(assignments)
        else:
            values = {}
            for item in assignments:
                name, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"rate {item!r} is not NAME=VALUE (e.g. pii=0.1)")
                try:
                    values[name.strip()] = float(value)
                except ValueError:
                    raise ValueError(f"rate {item!r}: {value!r} is not a number") from None
        unknown = sorted(set(values) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"unknown noise rate(s) {unknown}; known: "
                             f"{', '.join(type(self).model_fields)}")
        return type(self).model_validate({**self.model_dump(), **values})


# ---- text noise ----------------------------------------------------------------------------

# Written for the generator from what web pages append to images, NOT taken from the rule list
# (filters/data/boilerplate.txt): some phrases happen to contain one of its entries, others do
# not (held out), and bench/quality.py reports the rule's recall on both parts.
BOILERPLATE_ZH = ["点击图片可查看原图", "图片来自网络，侵删", "本图片仅供参考", "如需转载请注明来源",
                  "更多精彩请关注公众号", "扫描二维码关注我们", "喜欢就点个赞吧", "戳这里查看更多",
                  "阅读原文", "展开全文∨", "长按二维码识别关注", "点此查看大图", "图源网络，侵权删",
                  "版权归原作者所有", "高清大图下载", "图片来源于网络 如有侵权请告知", "本文转载自网络",
                  "分享到微信朋友圈", "查看全文>>", "原图已上传至相册"]
BOILERPLATE_EN = ["Click on image to enlarge", "Click here to view the full image",
                  "Photo courtesy of the photographer", "All Rights Reserved ©", "Tap to zoom",
                  "Pin it for later", "See more photos", "Download free HD wallpaper",
                  "Image via Shutterstock", "Royalty-free stock photo", "Share on Facebook",
                  "View larger image here", "Continue reading", "Sponsored content", "Read more »",
                  "Copyright 2023, used with permission"]
_HASHTAGS_ZH = ["#壁纸#", "#设计#", "#每日一图#", "#摄影#", "#简约#", "#配色#", "#插画#"]
_HASHTAGS_EN = ["#design", "#art", "#wallpaper", "#photooftheday", "#minimal", "#pattern",
                "#graphic", "#instagood"]
# Alt-text that is only a generic word; written for the generator like the phrases above.
_GENERIC = {"zh": ["图片", "照片", "未命名图片", "示意图", "效果图", "大图", "原图"],
            "en": ["image", "photo", "untitled", "main image", "product image", "featured image",
                   "hero image"]}


def filename(rng: np.random.Generator) -> str:
    stem = str(rng.choice(["IMG_", "DSC", "DSC_", "IMG", "P", "image", "photo_", "微信图片_"]))
    n = int(rng.integers(1, 10000))
    digits = f"{n:04d}" if stem != "微信图片_" else f"2023{int(rng.integers(1, 13)):02d}{n:04d}"
    ext = str(rng.choice([".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".webp"]))
    return stem + digits + ext


def uninformative(rng: np.random.Generator, lang: str) -> str:
    """Alt-text that says nothing about the image."""
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return filename(rng)
    if kind == 1:
        return str(rng.choice(_GENERIC[lang]))
    if kind == 2:
        tags = _HASHTAGS_ZH if lang == "zh" else _HASHTAGS_EN
        k = int(rng.integers(2, 5))
        return " ".join(str(t) for t in rng.choice(tags, size=k, replace=False))
    return str(rng.choice(BOILERPLATE_ZH if lang == "zh" else BOILERPLATE_EN))


def append_boilerplate(caption: str, rng: np.random.Generator, lang: str) -> str:
    phrase = str(rng.choice(BOILERPLATE_ZH if lang == "zh" else BOILERPLATE_EN))
    sep = str(rng.choice([" ", " | ", " - ", "\n"] if lang == "en" else [" ", "...", "…", " | "]))
    return caption + sep + phrase


# ---- sensitive-word lexicon ----------------------------------------------------------------

# Made-up but realistic spam / illicit-trade phrases, the kind a platform blocklists.
SENSITIVE_ZH = ["代开发票", "刷单返利", "高仿名表", "网络博彩", "私彩代理", "办理假证", "信用卡套现",
                "裸贷平台", "黑彩网站", "代考包过", "洗钱通道", "博彩返水", "赌球平台", "外挂辅助",
                "秒批网贷", "出售公民信息", "代办学历", "高利放贷", "枪支配件出售", "迷幻药代购",
                "窃听器材", "办理信用卡黑户", "六合彩资料", "套路贷", "监控破解", "刷粉丝业务"]
SENSITIVE_EN = ["replica watches sale", "casino bonus code", "buy followers cheap",
                "fake diploma service", "payday loan instant", "counterfeit banknotes",
                "crypto pump group", "betting tips vip", "account hacking service",
                "online casino bonus", "escort booking", "weight loss pills cheap",
                "spy camera hidden", "pirated movies download", "essay mill writers",
                "ticket scalping bot"]


def lexicon() -> list[str]:
    return SENSITIVE_ZH + SENSITIVE_EN


# How a lexicon word is written into a caption. The lexicon (lexicon.txt) holds the plain form;
# the others are how spam evades lists: forms a normalising matcher should still catch
# (traditional script, full-width letters, upper case) and held-out ones no list entry spells
# (letters spaced or split by symbols). Shares are per mille of sensitive rows.
SENSITIVE_FORMS_ZH = (("plain", 700), ("traditional", 100), ("spaced", 100), ("symbol_split", 100))
SENSITIVE_FORMS_EN = (("plain", 600), ("upper", 100), ("fullwidth", 100), ("hyphenated", 100),
                      ("spaced", 100))
HELD_OUT_FORMS = frozenset({"spaced", "symbol_split", "hyphenated"})


def sensitive_forms(word: str) -> dict[str, str]:
    """Every written form of a lexicon word: form name -> text."""
    if word.isascii():
        return {"plain": word, "upper": word.upper(),
                "fullwidth": "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c
                                     for c in word),
                "hyphenated": word.replace(" ", "-"), "spaced": " ".join(word.replace(" ", ""))}
    import opencc

    return {"plain": word, "traditional": opencc.OpenCC("s2t").convert(word), "spaced": " ".join(word),
            "symbol_split": "*".join(word[i:i + 2] for i in range(0, len(word), 2))}


def _form(word: str, caption: str, forms: tuple[tuple[str, int], ...]) -> str:
    # Chosen from a hash of the row, not from the generator's stream, so adding forms left every
    # other row of a seed's corpus as it was.
    h = int.from_bytes(hashlib.blake2b(f"{word}\0{caption}".encode(), digest_size=4).digest(), "little") % 1000
    for name, share in forms:
        if h < share:
            return name
        h -= share
    return "plain"


def add_sensitive(caption: str, rng: np.random.Generator, lang: str) -> tuple[str, str]:
    """(caption with a lexicon word written into it, the lexicon word)."""
    words = SENSITIVE_ZH if lang == "zh" else SENSITIVE_EN
    word = str(rng.choice(words))
    written = sensitive_forms(word)[_form(word, caption, SENSITIVE_FORMS_ZH if lang == "zh" else SENSITIVE_FORMS_EN)]
    if lang == "zh":
        text = str(rng.choice(["{c} {w}", "{w}：{c}", "{c}，{w}请私信"])).format(c=caption, w=written)
    else:
        text = str(rng.choice(["{c} {w}", "{w} - {c}", "{c} ({w})"])).format(c=caption, w=written)
    return text, word


def add_pii(caption: str, phrases: list[str], rng: np.random.Generator, lang: str) -> str:
    """Work PII phrases into a caption, before or after it."""
    sep = "，" if lang == "zh" else ", "
    for phrase in phrases:
        caption = f"{phrase}{sep}{caption}" if rng.random() < 0.3 else f"{caption}{sep}{phrase}"
    return caption
