"""Tiny WebDataset shards for the ALBEF tests: a coloured square at one of four positions,
captioned in English or Chinese."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220), "yellow": (240, 210, 20)}
COLORS_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"}
POS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
POS_ZH = {"left": "左边", "right": "右边", "top": "上方", "bottom": "下方"}


def toy_sample(color: str, pos: str, size: int = 72) -> Image.Image:
    img = Image.new("RGB", (size, size), (235, 235, 235))
    px = np.asarray(img).copy()
    cx, cy = POS[pos]
    r = size // 6
    x, y = int(cx * size), int(cy * size)
    px[y - r:y + r, x - r:x + r] = COLORS[color]
    return Image.fromarray(px)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_toy_shards(out: Path, n: int, per_shard: int = 64, seed: int = 0,
                     with_captions_list: bool = True, corrupt: int = 0) -> list[tuple[str, str]]:
    """Write n samples; returns their (color, position) in order. The first `corrupt` samples
    get bytes that are not an image."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = []
    tf = None
    for i in range(n):
        if i % per_shard == 0:
            if tf:
                tf.close()
            tf = tarfile.open(out / f"{i // per_shard:05d}.tar", "w")
        color = str(rng.choice(list(COLORS)))
        pos = str(rng.choice(list(POS)))
        truth.append((color, pos))
        en = f"a {color} square on the {pos}"
        zh = f"{POS_ZH[pos]}有一个{COLORS_ZH[color]}的方块"
        lang = "zh" if rng.random() < 0.3 else "en"
        primary = zh if lang == "zh" else en
        buf = io.BytesIO()
        toy_sample(color, pos).save(buf, format="JPEG", quality=90)
        key = f"{i:08d}"
        meta = {"caption": primary, "lang": lang, "uid": i, "url": f"http://x/{i}.jpg"}
        if with_captions_list:
            meta["captions"] = [{"text": primary, "origin": "web", "score": 0.5},
                                {"text": en if lang == "zh" else zh, "origin": "synthetic", "score": 0.4}]
        _add(tf, f"{key}.jpg", b"not a jpeg" if i < corrupt else buf.getvalue())
        _add(tf, f"{key}.txt", primary.encode())
        _add(tf, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())
    if tf:
        tf.close()
    return truth


def tiny_overrides(**extra) -> dict:
    """Smaller than the `tiny` config so each test step takes milliseconds."""
    o = {"vision.image_size": 32, "vision.patch_size": 8, "vision.width": 64, "vision.layers": 2,
         "vision.heads": 2, "text.hidden": 64, "text.heads": 2, "text.intermediate": 128,
         "text.text_layers": 1, "text.fusion_layers": 1, "text.max_len": 16, "embed_dim": 32,
         "queue_size": 32, "train.batch_size": 8, "train.load_size": 36, "train.loader_workers": 0,
         "train.warmup_steps": 2, "train.tokenizer_vocab": 200, "train.lr": 1e-3}
    o.update(extra)
    return o


def toy_tokenizer():
    from models.albef.tokenizer import TextTokenizer
    caps = [f"a {c} square on the {p}" for c in COLORS for p in POS]
    caps += [f"{POS_ZH[p]}有一个{COLORS_ZH[c]}的方块" for c in COLORS for p in POS]
    return TextTokenizer.train(caps * 3, vocab_size=200, min_frequency=1)


def toy_batch(tok, n: int = 8, size: int = 32, seed: int = 0):
    """Images (normalised float), ids, mask and captions of n distinct toy samples."""
    import torch
    from models.albef.data import eval_transform
    rng = np.random.default_rng(seed)
    pairs = [(c, p) for c in COLORS for p in POS]
    order = rng.permutation(len(pairs))[:n]
    caps, imgs = [], []
    for k in order:
        c, p = pairs[k]
        caps.append(f"a {c} square on the {p}")
        imgs.append(torch.from_numpy(np.asarray(toy_sample(c, p, 36)).copy()).permute(2, 0, 1))
    images = eval_transform(torch.stack(imgs), size)
    ids, mask = tok(caps, 16)
    return images, ids, mask, caps


def tiny_model(tok, **extra):
    import torch
    from models.albef.config import load_config
    from models.albef.model import AlbefModel
    cfg = load_config("tiny", tiny_overrides(**{"text.vocab_size": tok.vocab_size, **extra}))
    torch.manual_seed(0)
    return AlbefModel(cfg, tok.token_ids())


def write_toy_split(path: Path, n: int = 12, seed: int = 5) -> None:
    """A held-out parquet in the eval split's format."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c, p = str(rng.choice(list(COLORS))), str(rng.choice(list(POS)))
        buf = io.BytesIO()
        toy_sample(c, p).save(buf, format="PNG")
        rows.append({"image_id": f"t{i}", "image": buf.getvalue(),
                     "captions_en": [f"a {c} square on the {p}", f"{c} square, {p} side"],
                     "captions_zh": [f"{POS_ZH[p]}有一个{COLORS_ZH[c]}的方块"],
                     "shape": "square", "color": c, "size": "medium", "position": p, "count": 1,
                     "background": "plain"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
