"""Training data from WebDataset shards as mmcurate (or img2dataset) writes them.

Each sample is `{key}.jpg` + `{key}.txt` + `{key}.json` in a tar. The shards are indexed once
(member offsets, read with `tarfile`), then read by random access: that gives a seeded
permutation per epoch, an even split across workers, and exact resume at any step without
replaying the stream. JPEGs are decoded and resized on the CPU loader workers; the random
resized crop runs batched on the training device (`gpu_augment`). No horizontal flip: captions
say "left" and "right".
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import roi_align

from filters.image import to_rgb

log = logging.getLogger(__name__)

# CLIP's normalisation constants, which ALBEF also uses.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXT = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class SampleRef:
    shard: int
    key: str
    image: tuple[int, int]          # (offset, size) of the image member
    text: tuple[int, int] | None
    meta: tuple[int, int] | None


def list_shards(data: str | Path | list[str | Path]) -> list[Path]:
    """A directory (all *.tar below it), a single tar, a glob, or a list of those."""
    items = data if isinstance(data, list) else [data]
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(p.rglob("*.tar"))
        elif p.is_file():
            out.append(p)
        else:
            out += sorted(Path(x) for x in glob.glob(str(item), recursive=True))
    if not out:
        raise FileNotFoundError(f"no .tar shards found in {data}: pass the export's shards/ "
                                "directory, a tar file, or a glob like 'shards/*.tar'")
    return out


def index_shards(shards: list[Path]) -> list[SampleRef]:
    """Scan tar headers (no data read) and group members by key."""
    refs: list[SampleRef] = []
    for si, path in enumerate(shards):
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    stem, _, ext = m.name.rpartition(".")
                    groups.setdefault(stem, {})[ext.lower()] = (m.offset_data, m.size)
        except (tarfile.TarError, OSError) as e:
            raise ValueError(f"shard {path} is not a readable uncompressed tar ({e}); "
                             "re-export it or remove it from --data") from e
        missing = 0
        for key, g in groups.items():
            img = next((g[e] for e in IMAGE_EXT if e in g), None)
            if img is None or ("txt" not in g and "json" not in g):
                missing += 1
                continue
            refs.append(SampleRef(si, key, img, g.get("txt"), g.get("json")))
        if missing:
            log.warning("%s: %d keys lack an image or a caption and are not used", path, missing)
    return refs


def pick_caption(text: str | None, meta: dict | None, rng: random.Random) -> str | None:
    """One caption for this step: a random one of `captions` (mmcurate's kept captions) when
    present, else the json `caption`, else the .txt."""
    if meta:
        caps = [c.get("text") if isinstance(c, dict) else c for c in meta.get("captions") or []]
        caps = [c for c in caps if isinstance(c, str) and c.strip()]
        if caps:
            return rng.choice(caps)
        if isinstance(meta.get("caption"), str) and meta["caption"].strip():
            return meta["caption"]
    if text and text.strip():
        return text
    return None


def load_image(data: bytes, size: int) -> torch.Tensor:
    """Bytes -> uint8 (3, size, size): the curation stages' picture (filters.image.to_rgb: EXIF
    orientation, first frame, alpha on white), resized to a square as ALBEF does at eval time."""
    im = to_rgb(data).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


class ShardDataset(torch.utils.data.Dataset):
    """Random-access view over indexed shards; item i of epoch e always yields the same sample
    and caption choice (seeded by (seed, epoch, i))."""

    def __init__(self, data, load_size: int, seed: int = 0):
        self.shards = list_shards(data)
        self.refs = index_shards(self.shards)
        if not self.refs:
            raise ValueError(f"no usable samples (image + caption) in {len(self.shards)} shards under {data}")
        self.load_size = load_size
        self.seed = seed
        self.epoch = 0
        self._files: dict[int, io.BufferedReader] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.refs)

    def _read(self, shard: int, span: tuple[int, int]) -> bytes:
        if self._pid != os.getpid():  # forked loader worker: never share a file offset
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.shards[shard], "rb")
        f.seek(span[0])
        return f.read(span[1])

    def read_caption(self, i: int, epoch: int = 0) -> str | None:
        ref = self.refs[i]
        text = self._read(ref.shard, ref.text).decode("utf-8", "replace") if ref.text else None
        meta = None
        if ref.meta:
            try:
                meta = json.loads(self._read(ref.shard, ref.meta))
            except ValueError:
                meta = None
        return pick_caption(text, meta if isinstance(meta, dict) else None,
                            random.Random(hash((self.seed, epoch, i))))

    def __getitem__(self, item: tuple[int, int] | int) -> dict:
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        ref = self.refs[i]
        where = f"{self.shards[ref.shard].name}:{ref.key}"
        caption = self.read_caption(i, epoch)
        if caption is None:
            return {"error": f"{where}: no caption"}
        try:
            image = load_image(self._read(ref.shard, ref.image), self.load_size)
        except Exception as e:  # any undecodable image becomes a counted error, not a crash
            return {"error": f"{where}: image does not decode ({type(e).__name__}: {e})"}
        return {"image": image, "caption": caption}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


class EpochSampler(torch.utils.data.Sampler):
    """Seeded permutation per epoch, split evenly across `world` ranks, batches of equal size
    (the tail that cannot fill a batch on every rank is left for the next epoch's shuffle),
    starting at `start_batch` for exact resume."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0):
        if n < batch_size * world:
            raise ValueError(f"{n} samples cannot fill one batch of {batch_size} on {world} workers; "
                             "lower --batch-size")
        self.n, self.bs, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.bs * self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        # Global batch k is perm[k*bs*world : (k+1)*bs*world]; this rank takes its slice of it,
        # so the union over ranks of step k equals the single-process batch of the same size.
        for k in range(self.start_batch, self.batches_per_epoch):
            base = k * self.bs * self.world + self.rank * self.bs
            yield [(self.epoch, j) for j in perm[base:base + self.bs]]


def collate(items: list[dict]) -> dict:
    good = [it for it in items if "image" in it]
    errors = [it["error"] for it in items if "error" in it]
    if not good:
        return {"images": None, "captions": [], "errors": errors}
    return {"images": torch.stack([it["image"] for it in good]),
            "captions": [it["caption"] for it in good], "errors": errors}


def make_loader(ds: ShardDataset, sampler: EpochSampler, workers: int,
                generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
    # An explicit generator keeps the loader from drawing on the global RNG, which the
    # training step owns (and checkpoints) for exact resume.
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                       collate_fn=collate, persistent_workers=False,
                                       pin_memory=torch.cuda.is_available(),
                                       generator=generator or torch.Generator().manual_seed(0))


def _random_boxes(n: int, size: int, scale: tuple[float, float], ratio: tuple[float, float],
                  generator: torch.Generator) -> torch.Tensor:
    """torchvision RandomResizedCrop's box distribution, vectorised (10 tries, then full image)."""
    area = size * size
    tries = 10
    s = torch.empty(n, tries).uniform_(*scale, generator=generator) * area
    logr = torch.empty(n, tries).uniform_(np.log(ratio[0]), np.log(ratio[1]), generator=generator)
    r = torch.exp(logr)
    w = torch.sqrt(s * r).round()
    h = torch.sqrt(s / r).round()
    ok = (w <= size) & (h <= size) & (w > 0) & (h > 0)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    w = torch.where(first >= 0, w.gather(1, first.clamp(min=0)[:, None]).squeeze(1), torch.full((n,), float(size)))
    h = torch.where(first >= 0, h.gather(1, first.clamp(min=0)[:, None]).squeeze(1), torch.full((n,), float(size)))
    x0 = (torch.rand(n, generator=generator) * (size - w + 1)).floor()
    y0 = (torch.rand(n, generator=generator) * (size - h + 1)).floor()
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] float (B,3,H,W) -> CLIP-normalised float."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def gpu_augment(images: torch.Tensor, out_size: int, scale: tuple[float, float] = (0.5, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                offset: int = 0, total: int | None = None) -> torch.Tensor:
    """Random resized crop of each image (different box per image), batched on the images'
    device with roi_align (bilinear), then normalised. uint8 (B,3,S,S) -> float (B,3,o,o).

    Boxes are drawn for a global batch of `total` images and this worker takes rows
    [offset, offset + B), so N workers crop exactly as one process with the whole batch would."""
    b, _, size, _ = images.shape
    generator = generator or torch.Generator().manual_seed(0)
    total = total or b
    boxes = _random_boxes(total, size, scale, ratio, generator)[offset:offset + b].to(images.device)
    rois = torch.cat([torch.arange(b, device=images.device, dtype=boxes.dtype)[:, None], boxes], 1)
    x = images.float() / 255.0
    crops = roi_align(x, rois, output_size=(out_size, out_size), spatial_scale=1.0,
                      sampling_ratio=2, aligned=True)
    return normalize(crops)


def eval_transform(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """uint8 (B,3,S,S) -> normalised (B,3,o,o) without augmentation."""
    x = images.float() / 255.0
    if x.shape[-1] != out_size:
        x = torch.nn.functional.interpolate(x, size=(out_size, out_size), mode="bilinear",
                                            antialias=True, align_corners=False)
    return normalize(x)
