"""Evaluation on the held-out split (parquet: image_id, image bytes, captions_en, captions_zh,
shape, color, size, position, count, background).

* Retrieval, ALBEF protocol: rank by ITC similarity, then re-rank each query's top-k candidates
  by the ITM match score (candidates outside the top-k keep their ITC order below them).
  Image->text counts a hit when any of the image's captions is within the top K.
* Captioning: BLEU-4 and CIDEr-D of the decoder's beam-search captions against the image's
  reference captions in the caption's language, and the fraction of captions whose colour,
  shape and position match the scene (`synth.attributes.extract_attributes`).
"""
from __future__ import annotations

import io
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from .inference import AlbefInference

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
CHECKED_ATTRIBUTES = ("color", "shape", "position")


# ---- retrieval ---------------------------------------------------------------------------------
def recall_at_k(i2t: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """i2t: (N images, M texts) scores; text_image: (M,) index of each text's image.
    Returns percentages tr_r@k (image->text) and ir_r@k (text->image)."""
    n, m = i2t.shape
    out: dict[str, float] = {}
    order_t = np.argsort(-i2t, axis=1)
    # rank of the best-ranked true caption of each image
    hit_t = text_image[order_t] == np.arange(n)[:, None]
    rank_t = np.where(hit_t.any(1), hit_t.argmax(1), m)
    order_i = np.argsort(-i2t.T, axis=1)
    rank_i = (order_i == text_image[:, None]).argmax(1)
    for k in ks:
        out[f"tr_r@{k}"] = float((rank_t < k).mean() * 100)
        out[f"ir_r@{k}"] = float((rank_i < k).mean() * 100)
    out["r_mean"] = float(np.mean([out[f"{d}_r@{k}"] for d in ("tr", "ir") for k in ks]))
    return out


def chance_recall(text_image: np.ndarray, n_images: int, ks=(1, 5, 10)) -> dict[str, float]:
    """Expected R@k of a random ranking."""
    m = len(text_image)
    per_image = np.bincount(text_image, minlength=n_images)
    out = {}
    for k in ks:
        # P(at least one of c true texts among k random picks from m)
        tr = np.mean([1 - math.comb(m - c, k) / math.comb(m, k) for c in per_image])
        out[f"tr_r@{k}"] = float(tr * 100)
        out[f"ir_r@{k}"] = float(min(1.0, k / n_images) * 100)
    return out


def itm_topk(itc: np.ndarray, itm_fn, k: int) -> np.ndarray:
    """ITM scores `itm_fn(row, cols)` of each row's ITC top-k columns; NaN elsewhere."""
    out = np.full(itc.shape, np.nan)
    top = np.argsort(-itc, axis=1)[:, :min(k, itc.shape[1])]
    for r in range(itc.shape[0]):
        out[r, top[r]] = np.asarray(itm_fn(r, top[r]), dtype=np.float64)
    return out


def rerank(itc: np.ndarray, itm: np.ndarray, itc_weight: float = 0.0) -> np.ndarray:
    """Re-ranked scores: the top-k candidates (finite `itm`) ordered by ITM score (+ itc_weight x
    ITC similarity), above the rest, which keep their ITC order. itc_weight 0 is ALBEF's
    protocol; 1 is BLIP's (ITM + ITC)."""
    top = np.isfinite(itm)
    return np.where(top, 1000.0 + np.nan_to_num(itm) + itc_weight * itc, itc.astype(np.float64))


# ---- captioning metrics ------------------------------------------------------------------------
def tokenize_caption(text: str) -> list[str]:
    """English: lower-cased words; Chinese: one token per character (no segmenter needed and
    comparable across systems). Punctuation is dropped."""
    text = text.lower()
    toks: list[str] = []
    for piece in re.split(r"(" + _CJK.pattern + ")", text):
        if _CJK.fullmatch(piece or " "):
            toks.append(piece)
        else:
            toks += _WORD.findall(piece)
    return toks


def _ngrams(toks: list[str], n: int) -> Counter:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def bleu4(candidates: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002): clipped n-gram precisions summed over the corpus,
    uniform geometric mean over n = 1..4, brevity penalty against the closest reference length.
    Returns 0..100."""
    match = [0] * 4
    total = [0] * 4
    c_len = r_len = 0
    for cand, refs in zip(candidates, references):
        c = tokenize_caption(cand)
        rs = [tokenize_caption(r) for r in refs] or [[]]
        c_len += len(c)
        r_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]
        for n in range(1, 5):
            cg = _ngrams(c, n)
            max_ref: Counter = Counter()
            for r in rs:
                max_ref |= _ngrams(r, n)
            match[n - 1] += sum(min(v, max_ref[g]) for g, v in cg.items())
            total[n - 1] += max(0, len(c) - n + 1)
    if min(match) == 0 or c_len == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / 4
    bp = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return 100 * bp * math.exp(log_p)


def cider_d(candidates: list[str], references: list[list[str]], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015): per n = 1..4, TF-IDF n-gram vectors (document frequency
    over the reference sets), similarity = sum of min(cand, ref) * ref over the norms, times a
    Gaussian length penalty exp(-(len_c - len_r)^2 / 2 sigma^2); averaged over references and
    n, times 10."""
    cands = [tokenize_caption(c) for c in candidates]
    refs = [[tokenize_caption(r) for r in rs] for rs in references]
    n_docs = len(refs)
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for n in range(1, 5) for g in _ngrams(r, n)})
    log_n = math.log(max(1.0, float(n_docs)))

    def vec(toks: list[str]) -> tuple[list[dict], list[float]]:
        vs, norms = [], []
        for n in range(1, 5):
            v = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in _ngrams(toks, n).items()}
            vs.append(v)
            norms.append(math.sqrt(sum(x * x for x in v.values())))
        return vs, norms

    scores = []
    for c, rs in zip(cands, refs):
        cv, cn = vec(c)
        per_n = np.zeros(4)
        for r in rs:
            rv, rn = vec(r)
            pen = math.exp(-((len(c) - len(r)) ** 2) / (2 * sigma ** 2))
            for n in range(4):
                num = sum(min(x, rv[n][g]) * rv[n][g] for g, x in cv[n].items() if g in rv[n])
                if cn[n] and rn[n]:
                    per_n[n] += pen * num / (cn[n] * rn[n])
        scores.append(per_n.mean() / max(1, len(rs)) * 10)
    return float(np.mean(scores)) if scores else 0.0


def attribute_accuracy(captions: list[str], truth: list[dict]) -> dict[str, float]:
    """Fraction (%) of captions naming the true colour / shape / position, and all three."""
    from synth.attributes import extract_attributes

    ok = {a: 0 for a in CHECKED_ATTRIBUTES}
    all_ok = 0
    for cap, row in zip(captions, truth):
        got = extract_attributes(cap)
        right = [got.get(a) is not None and str(got.get(a)) == str(row[a]) for a in CHECKED_ATTRIBUTES]
        for a, r in zip(CHECKED_ATTRIBUTES, right):
            ok[a] += r
        all_ok += all(right)
    n = max(1, len(captions))
    out = {f"attr_{a}": 100 * v / n for a, v in ok.items()}
    out["attr_all"] = 100 * all_ok / n
    return out


# ---- the whole eval ----------------------------------------------------------------------------
def load_split(path: str | Path, max_images: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"eval split {path} does not exist (expected e.g. test/test.parquet)")
    table = pq.read_table(path)
    need = {"image", "captions_en", "captions_zh"}
    missing = need - set(table.column_names)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}; the eval split needs "
                         "image (bytes), captions_en and captions_zh")
    rows = table.to_pylist()
    return rows[:max_images] if max_images else rows


def evaluate(ckpt: str | Path, split: str | Path, device: str = "cpu", lang: str = "both",
             k: int = 16, max_images: int | None = None, beam: int = 3,
             caption: bool = True, inference: AlbefInference | None = None) -> dict[str, float]:
    """Retrieval (ITC and ITC + ITM re-rank) and captioning metrics on `split`.
    lang: which captions form the text gallery ("en", "zh" or "both")."""
    if lang not in ("en", "zh", "both"):
        raise ValueError(f"lang must be en, zh or both, not {lang!r}")
    inf = inference or AlbefInference.load(ckpt, device=device)
    rows = load_split(split, max_images)
    images = []
    for i, r in enumerate(rows):
        try:
            images.append(Image.open(io.BytesIO(r["image"])).convert("RGB"))
        except Exception as e:
            raise ValueError(f"{split}: row {i} (image_id {r.get('image_id')}) has an undecodable "
                             f"image ({e}); regenerate the split") from e
    texts, text_image = [], []
    for i, r in enumerate(rows):
        for key in (("captions_en", "captions_zh") if lang == "both" else (f"captions_{lang}",)):
            for c in r[key] or []:
                texts.append(c)
                text_image.append(i)
    text_image = np.asarray(text_image)
    embeds, img_feat = inf.image_embeddings(images)
    txt_feat = torch.from_numpy(inf.encode_texts(texts))
    itc = (img_feat.cpu() @ txt_feat.T).numpy()
    out: dict[str, float] = {"n_images": len(images), "n_texts": len(texts)}
    out.update({f"itc_{m}": v for m, v in recall_at_k(itc, text_image).items()})

    def i2t_itm(r, cols):
        return inf.itm_from_embeddings(embeds[r:r + 1].expand(len(cols), -1, -1),
                                       [texts[c] for c in cols]).numpy()

    def t2i_itm(r, cols):
        return inf.itm_from_embeddings(embeds[torch.as_tensor(cols)], [texts[r]] * len(cols)).numpy()

    # ITM is computed once per direction; "itm" ranks the top-k by ITM alone (ALBEF), "itm_itc"
    # by ITM probability + ITC cosine (BLIP's variant).
    itm_i2t = itm_topk(itc, i2t_itm, k)
    itm_t2i = itm_topk(itc.T, t2i_itm, k)
    for name, w in (("itm", 0.0), ("itm_itc", 1.0)):
        tr = recall_at_k(rerank(itc, itm_i2t, w), text_image)
        ir = recall_at_k(rerank(itc.T, itm_t2i, w).T, text_image)
        res = {m: v for m, v in tr.items() if m.startswith("tr")}
        res.update({m: v for m, v in ir.items() if m.startswith("ir")})
        res["r_mean"] = float(np.mean([v for m, v in res.items() if "@" in m]))
        out.update({f"{name}_{m}": v for m, v in res.items()})
    out.update({f"chance_{m}": v for m, v in chance_recall(text_image, len(images)).items()})
    if caption:
        caps = [c[0] for c in inf.caption(images, n=1, beam=beam)]
        refs = [r["captions_zh"] if _CJK.search(c) else r["captions_en"] for c, r in zip(caps, rows)]
        out["bleu4"] = bleu4(caps, refs)
        out["cider"] = cider_d(caps, refs)
        out["caption_zh_fraction"] = 100 * sum(bool(_CJK.search(c)) for c in caps) / max(1, len(caps))
        if all(a in rows[0] for a in CHECKED_ATTRIBUTES):
            out.update(attribute_accuracy(caps, rows))
        out["examples"] = caps[:5]  # type: ignore[assignment]
    return out
