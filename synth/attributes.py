"""Attribute vocabularies of the synthetic scenes, and caption -> attribute extraction.

Canonical values are English words (counts are the digits "1".."3"). Each attribute maps a
canonical value to its English and Chinese surface forms; the first form of each list is the
one the caption templates use, the rest are synonyms `extract_attributes` also understands
(so it can score captions written by a model, not only by our templates).
"""
from __future__ import annotations

import re
from functools import lru_cache

# RGB fill of each colour; chosen far apart so a colour is recoverable from pixels.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "orange": (245, 130, 20),
    "purple": (130, 40, 170),
    "pink": (245, 130, 190),
    "brown": (120, 70, 30),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}

COLORS_EN: dict[str, list[str]] = {c: [c] for c in COLOR_RGB}
# Never rendered; listed so a caption saying "gray" is read as gray, not as nothing.
COLORS_EN["gray"] = ["gray", "grey"]
COLORS_ZH: dict[str, list[str]] = {
    "red": ["红色", "红"],
    "green": ["绿色", "绿"],
    "blue": ["蓝色", "蓝"],
    "yellow": ["黄色", "黄"],
    "orange": ["橙色", "橘色", "橙"],
    "purple": ["紫色", "紫"],
    "pink": ["粉色", "粉红色", "粉红"],
    "brown": ["棕色", "褐色", "咖啡色", "棕"],
    "black": ["黑色", "黑"],
    "white": ["白色", "白"],
    "gray": ["灰色", "灰"],
}

# English: (singular, plural) first, then synonyms.
SHAPES_EN: dict[str, list[str]] = {
    "circle": ["circle", "circles", "disc", "discs", "disk", "disks"],
    "square": ["square", "squares"],
    "triangle": ["triangle", "triangles"],
    "star": ["star", "stars"],
    "hexagon": ["hexagon", "hexagons"],
    "diamond": ["diamond", "diamonds", "rhombus", "rhombuses"],
    "cross": ["cross", "crosses", "plus sign", "plus signs"],
    "heart": ["heart", "hearts"],
}
SHAPES_ZH: dict[str, list[str]] = {
    "circle": ["圆形", "圆圈", "圆盘", "圆"],
    "square": ["正方形", "方形", "方块"],
    "triangle": ["三角形", "三角"],
    "star": ["星形", "五角星", "星星", "星"],
    "hexagon": ["六边形", "六角形"],
    "diamond": ["菱形"],
    "cross": ["十字形", "十字"],
    "heart": ["心形", "爱心"],
}

# English forms: (phrase after "on/at/in", short phrase) first; e.g. "on the left of".
POSITIONS_EN: dict[str, list[str]] = {
    "left": ["left", "left-hand"],
    "right": ["right", "right-hand"],
    "top": ["top", "upper part", "upper"],
    "bottom": ["bottom", "lower part", "lower"],
    "center": ["center", "centre", "middle"],
}
POSITIONS_ZH: dict[str, list[str]] = {
    "left": ["左侧", "左边", "左方", "左面", "左部", "靠左"],
    "right": ["右侧", "右边", "右方", "右面", "右部", "靠右"],
    "top": ["上方", "顶部", "上部", "上面", "上边", "顶端"],
    "bottom": ["下方", "底部", "下部", "下面", "下边", "底端"],
    "center": ["中间", "中央", "正中", "中心", "中部"],
}

SIZES_EN: dict[str, list[str]] = {
    "small": ["small", "tiny", "little"],
    "medium": ["medium-sized", "medium", "mid-sized"],
    "large": ["large", "big", "huge"],
}
SIZES_ZH: dict[str, list[str]] = {
    "small": ["小", "较小", "小号"],
    "medium": ["中等大小的", "中等大小", "中等", "中号"],
    "large": ["大", "较大", "大号"],
}

COUNTS_EN: dict[str, list[str]] = {
    "1": ["one", "a single", "single", "1"],
    "2": ["two", "a pair of", "pair of", "2"],
    "3": ["three", "3"],
}
COUNTS_ZH: dict[str, list[str]] = {
    "1": ["一个", "1个", "单个", "一只", "一枚"],
    "2": ["两个", "二个", "2个", "一对", "两只", "两枚"],
    "3": ["三个", "3个", "三只", "三枚"],
}

# English forms: (adjective, noun) first.
BACKGROUNDS_EN: dict[str, list[str]] = {
    "plain": ["plain", "solid", "uniform"],
    "gradient": ["gradient"],
    "stripes": ["striped", "stripes", "stripy"],
    "noise": ["noisy", "grainy", "speckled", "noise"],
    "checker": ["checkered", "checkerboard", "chequered"],
    "dots": ["dotted", "polka-dot", "polka dot", "spotted"],
}
BACKGROUNDS_ZH: dict[str, list[str]] = {
    "plain": ["纯色", "单色"],
    "gradient": ["渐变"],
    "stripes": ["条纹"],
    "noise": ["噪点", "颗粒", "杂色"],
    "checker": ["格子", "棋盘格"],
    "dots": ["波点", "圆点"],
}

SHAPES = list(SHAPES_EN)
COLORS = list(COLOR_RGB)
POSITIONS = list(POSITIONS_EN)
SIZES = list(SIZES_EN)
COUNTS = [1, 2, 3]
BACKGROUNDS = list(BACKGROUNDS_EN)

ATTRIBUTES = ("color", "shape", "position", "size", "count", "background")

_VOCAB_EN = {
    "color": COLORS_EN, "shape": SHAPES_EN, "position": POSITIONS_EN,
    "size": SIZES_EN, "count": COUNTS_EN, "background": BACKGROUNDS_EN,
}
_VOCAB_ZH = {
    "color": COLORS_ZH, "shape": SHAPES_ZH, "position": POSITIONS_ZH,
    "size": SIZES_ZH, "count": COUNTS_ZH, "background": BACKGROUNDS_ZH,
}

_CJK = re.compile(r"[\u4e00-\u9fff]")


@lru_cache(maxsize=1)
def _matchers() -> tuple[re.Pattern, dict[str, tuple[str, str]], re.Pattern, dict[str, tuple[str, str]]]:
    """One alternation per language, longest form first, so that a longer phrase wins over a
    shorter one inside it ("粉红色" is pink, not red; "圆点背景" is a background, not a circle)."""

    def build(vocab: dict[str, dict[str, list[str]]], word_bounded: bool):
        table: dict[str, tuple[str, str]] = {}
        for attr, values in vocab.items():
            for canon, forms in values.items():
                for form in forms:
                    table.setdefault(form.lower(), (attr, canon))
        alts = sorted(table, key=len, reverse=True)
        body = "|".join(re.escape(a) for a in alts)
        pattern = rf"(?<![\w-])(?:{body})(?![\w-])" if word_bounded else f"(?:{body})"
        return re.compile(pattern, re.IGNORECASE), table

    en_re, en_table = build(_VOCAB_EN, word_bounded=True)
    zh_re, zh_table = build(_VOCAB_ZH, word_bounded=False)
    return en_re, en_table, zh_re, zh_table


@lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def extract_attributes(caption: str) -> dict[str, str | None]:
    """Find colour, shape, position (and size, count, background) named in an EN or ZH caption.

    Returns canonical English values ("red", "circle", "left", "small", "2", "stripes") or None
    for attributes the caption does not name. When an attribute is named more than once, the
    first mention wins (captions describe the main object first). Traditional Chinese is
    converted to simplified before matching.
    """
    out: dict[str, str | None] = {a: None for a in ATTRIBUTES}
    if not caption:
        return out
    en_re, en_table, zh_re, zh_table = _matchers()
    text = caption
    if _CJK.search(text):
        text = _t2s().convert(text)
        matches = [(m.start(), zh_table[m.group(0).lower()]) for m in zh_re.finditer(text)]
        # Mixed captions ("两个red circles") also get their English words looked up.
        matches += [(m.start(), en_table[m.group(0).lower()]) for m in en_re.finditer(text)]
        matches.sort(key=lambda t: t[0])
    else:
        matches = [(m.start(), en_table[m.group(0).lower()]) for m in en_re.finditer(text)]
    for _, (attr, canon) in matches:
        if out[attr] is None:
            out[attr] = canon
    return out
