"""Caption templates: several English and Chinese paraphrases of a scene's true attributes."""
from __future__ import annotations

import numpy as np

from synth.attributes import (
    BACKGROUNDS_EN, BACKGROUNDS_ZH, COLORS, COLORS_ZH, COUNTS, POSITIONS, SHAPES, SHAPES_EN,
    SHAPES_ZH, SIZES,
)

_COUNT_EN = {1: ["one", "a single"], 2: ["two"], 3: ["three"]}
_SIZE_EN = {"small": "small", "medium": "medium-sized", "large": "large"}
_POS_OF_EN = {"left": "on the left of", "right": "on the right of", "top": "at the top of",
              "bottom": "at the bottom of", "center": "in the center of"}
_POS_SIDE_EN = {"left": "on the left", "right": "on the right", "top": "at the top",
                "bottom": "at the bottom", "center": "in the middle"}

_EN_TEMPLATES = [
    "{c} {s} {col} {sh} {pos_of} a {bg} background",
    "a {bg} background with {c} {s} {col} {sh} {pos_side}",
    "{c} {col} {sh} {pos_side}, {s}, on a {bg} background",
    "photo of {c} {s} {col} {sh} {pos_side} over a {bg} background",
    "{bg} background, {c} {s} {col} {sh} placed {pos_of} the image",
]

_COUNT_ZH = {1: "一个", 2: "两个", 3: "三个"}
_SIZE_ZH = {"small": "小", "medium": "中等大小的", "large": "大"}
_SIZE_ZH_NOUN = {"small": "较小", "medium": "中等", "large": "较大"}
_SIZE_ZH_TAG = {"small": "小号", "medium": "中号", "large": "大号"}
_POS_ZH = {"left": ["左侧", "左边"], "right": ["右侧", "右边"], "top": ["上方", "顶部"],
           "bottom": ["下方", "底部"], "center": ["中间", "中央"]}

_ZH_TEMPLATES = [
    "{bg}背景{pos}有{cnt}{col}的{sz}{sh}",
    "{cnt}{sz}{col}{sh}位于{bg}背景的{pos}",
    "在{bg}背景的{pos}，有{cnt}{col}的{sh}，尺寸{szn}",
    "画面{pos}是{cnt}{sz}{col}{sh}，背景为{bg}",
    "{cnt}{col}{sh}（{szt}）出现在{bg}背景的{pos}",
]

N_TEMPLATES = {"en": len(_EN_TEMPLATES), "zh": len(_ZH_TEMPLATES)}


def _en(attrs: dict, template: int, variant: int) -> str:
    count = int(attrs["count"])
    counts = _COUNT_EN[count]
    shape_forms = SHAPES_EN[attrs["shape"]]
    text = _EN_TEMPLATES[template].format(
        c=counts[variant % len(counts)],
        s=_SIZE_EN[attrs["size"]],
        col=attrs["color"],
        sh=shape_forms[0] if count == 1 else shape_forms[1],
        pos_of=_POS_OF_EN[attrs["position"]],
        pos_side=_POS_SIDE_EN[attrs["position"]],
        bg=BACKGROUNDS_EN[attrs["background"]][0],
    )
    return text[0].upper() + text[1:] if variant % 3 == 1 else text


def _zh(attrs: dict, template: int, variant: int) -> str:
    positions = _POS_ZH[attrs["position"]]
    size = attrs["size"]
    text = _ZH_TEMPLATES[template].format(
        cnt=_COUNT_ZH[int(attrs["count"])],
        sz=_SIZE_ZH[size],
        szn=_SIZE_ZH_NOUN[size],
        szt=_SIZE_ZH_TAG[size],
        col=COLORS_ZH[attrs["color"]][0],
        sh=SHAPES_ZH[attrs["shape"]][0],
        pos=positions[variant % len(positions)],
        bg=BACKGROUNDS_ZH[attrs["background"]][0],
    )
    # Medium adjectives already end in 的; "红色的中等大小的" reads badly twice over.
    return text.replace("的中等大小的", "、中等大小的")


def render_caption(attrs: dict, lang: str, template: int, variant: int = 0) -> str:
    """The caption of `attrs` (shape, color, size, position, count, background) written with
    template number `template` in `lang` ("en" or "zh")."""
    if lang == "en":
        return _en(attrs, template, variant)
    if lang == "zh":
        return _zh(attrs, template, variant)
    raise ValueError(f"unknown caption language {lang!r}; expected 'en' or 'zh'")


def caption_for(attrs: dict, lang: str, rng: np.random.Generator) -> str:
    template = int(rng.integers(0, N_TEMPLATES[lang]))
    return render_caption(attrs, lang, template, int(rng.integers(0, 6)))


def all_captions(attrs: dict, lang: str) -> list[str]:
    """Every template's paraphrase (the test split's reference captions)."""
    return [render_caption(attrs, lang, t, t) for t in range(N_TEMPLATES[lang])]


# Which attribute a "one attribute wrong" caption changes; colour/shape/position dominate
# because those are what eval and the filters can check.
_WRONG_FIELDS = ["color", "shape", "position", "count", "size"]
_WRONG_WEIGHTS = np.array([0.3, 0.3, 0.2, 0.1, 0.1])
_CHOICES = {"color": COLORS, "shape": SHAPES, "position": POSITIONS, "count": COUNTS,
            "size": SIZES}


def wrong_attribute(attrs: dict, rng: np.random.Generator) -> tuple[dict, str]:
    """A copy of `attrs` with exactly one attribute changed; returns (attrs, changed field)."""
    field = str(rng.choice(_WRONG_FIELDS, p=_WRONG_WEIGHTS))
    others = [v for v in _CHOICES[field] if v != attrs[field]]
    new = dict(attrs)
    new[field] = others[int(rng.integers(0, len(others)))]
    return new, field
