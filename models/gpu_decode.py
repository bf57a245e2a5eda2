"""Image bytes -> model-sized pixels, on CPU threads (PIL) or on the GPU (nvJPEG).

Both paths give the picture of filters.image.to_rgb, the one decode path (EXIF orientation,
first frame, alpha on white, any mode converted). The CPU path is to_rgb itself. The GPU path
decodes a batch of JPEGs with torchvision.io.decode_jpeg(device="cuda") (nvJPEG), which ignores
EXIF, so each image's orientation is read from its header on the CPU (a marker walk, no pixel
decode) and applied on the device by flips and transposes; then it resizes on device, so a fast
GPU is not starved by CPU JPEG decoding. Only JPEGs that nvJPEG turns into to_rgb's picture go
there (8-bit YCbCr or grey, orientation read exactly as Pillow reads it); the rest (PNG, WebP,
GIF, CMYK or RGB-coded JPEGs, odd EXIF, broken files) take the CPU path per image.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from filters.image import to_rgb
from models.clip.transforms import PixelSpec, draft_size, pil_to_uint8, tensor_resize_crop

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes | None) -> bool:
    return bool(data) and data[:3] == JPEG_MAGIC  # type: ignore[index]


def gpu_decode_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def open_image(data: bytes, spec: PixelSpec | None = None, draft: bool = True) -> Image.Image:
    """to_rgb's picture; a JPEG is DCT-downscaled first when spec allows (2-4x less decode work
    for web-sized images, and the result is still >= the model's input size)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF/palette warnings on web images are not errors
        return to_rgb(data, draft=draft_size(spec) if draft and spec is not None else None)


def decode_cpu(data: bytes | None, spec: PixelSpec, draft: bool = True) -> np.ndarray | None:
    """One image -> HWC uint8 at spec.size, or None when it cannot be decoded (never raises)."""
    if not data:
        return None
    try:
        return pil_to_uint8(open_image(data, spec, draft), spec)
    except Exception:  # noqa: BLE001 - any decoder failure is reported as decode_error
        return None


def decode_pil(data: bytes | None) -> Image.Image | None:
    if not data:
        return None
    try:
        return open_image(data)
    except Exception:  # noqa: BLE001
        return None


# Frame headers nvJPEG decodes: baseline, extended sequential, progressive (Huffman coded).
_NVJPEG_SOF = {0xC0, 0xC1, 0xC2}
_EXIF_HEADER = b"Exif\x00\x00"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"


def nvjpeg_orientation(data: bytes | None) -> int | None:
    """The EXIF orientation to apply after nvJPEG, or None when these bytes must take the CPU
    path (to_rgb): not a JPEG; not 8-bit Huffman-coded; not YCbCr or grey (CMYK, YCCK, Adobe
    or JFIF-less RGB, where nvJPEG's colours could differ from Pillow's); an orientation only in
    XMP, or an EXIF block we do not read exactly as Pillow does; a header broken before the scan.

    Walks the markers up to the first scan (~20 us) instead of opening the file with Pillow
    (~200 us, serial on the prefetch thread: it would cap the GPU path at a few thousand
    images/s). When it returns a value, that value is filters.image.orientation's (tested)."""
    if not is_jpeg(data):
        return None
    d: bytes = data  # type: ignore[assignment]
    i, n = 2, len(d)
    comps = None
    o: int | None = None
    exif_seen = xmp_seen = adobe_rgb = False
    while i + 4 <= n:
        if d[i] != 0xFF:
            return None
        marker = d[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            break
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            return None  # no standalone markers belong in a plain header
        length = int.from_bytes(d[i + 2:i + 4], "big")
        if length < 2 or i + 2 + length > n:
            return None
        seg = d[i + 4:i + 2 + length]
        if marker == 0xE1 and seg.startswith(_EXIF_HEADER):
            if exif_seen:
                return None  # Pillow reads the first; a second one is not worth a guess
            exif_seen = True
            o = _tiff_orientation(seg[len(_EXIF_HEADER):])
            if o == -1:
                return None
        elif marker == 0xE1 and seg.startswith(_XMP_HEADER):
            xmp_seen = True
        elif marker == 0xEE and seg.startswith(b"Adobe") and len(seg) >= 12:
            adobe_rgb = seg[11] == 0  # transform 0: stored as RGB, not YCbCr
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _NVJPEG_SOF or len(seg) < 6 or seg[0] != 8:
                return None
            comps = seg[5]
            if comps == 3 and len(seg) >= 15 and bytes(seg[6:15:3]) == b"RGB":
                adobe_rgb = True  # component ids R, G, B: libjpeg reads it as RGB
        i += 2 + length
    else:
        return None
    if comps not in (1, 3) or (comps == 3 and adobe_rgb):
        return None
    if o is None:
        if xmp_seen:
            return None  # Pillow would look for tiff:Orientation in the XMP
        o = 1
    return o


# TIFF field type -> bytes per value (TIFF 6.0 and Pillow's table).
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


def _tiff_orientation(t: bytes) -> int | None:
    """Orientation from an EXIF (TIFF) block's first IFD: 1-8, None when the IFD has no such
    tag, -1 when the block is one Pillow might read differently (it stops at the first entry
    whose data lies outside the block, skips unknown types...): those go to the CPU path."""
    order = {b"II*\x00": "little", b"MM\x00*": "big"}.get(bytes(t[:4]))
    if order is None or len(t) < 8:
        return -1

    def num(a: int, b: int) -> int:
        return int.from_bytes(t[a:b], order)  # type: ignore[arg-type]

    off = num(4, 8)
    if off + 2 > len(t):
        return -1
    count = num(off, off + 2)
    if off + 2 + 12 * count + 4 > len(t):  # the entries and the next-IFD offset
        return -1
    found: int | None = None
    for k in range(count):
        p = off + 2 + 12 * k
        tag, typ, cnt = num(p, p + 2), num(p + 2, p + 4), num(p + 4, p + 8)
        size = _TIFF_TYPE_SIZE.get(typ, 0) * cnt
        if typ not in _TIFF_TYPE_SIZE or (size > 4 and num(p + 8, p + 12) + size > len(t)):
            return -1
        if tag == 0x0112:
            if found is not None or typ != 3 or cnt != 1:  # one SHORT, as the standard says
                return -1
            found = num(p + 8, p + 10)
    if found is None:
        return None
    return found if 1 <= found <= 8 else -1


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF orientation 1-8 to a CHW tensor on any device, as a viewer does (the same
    transforms as filters.image for PIL images)."""
    if orientation in (5, 6, 7, 8):
        img = img.transpose(-1, -2)
    flip = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return img.flip(flip) if flip else img


def decode_jpegs_gpu(datas: Sequence[bytes], device: torch.device,
                     orientations: Sequence[int] | None = None) -> list[torch.Tensor | None]:
    """Batched nvJPEG decode to CHW uint8 RGB tensors on `device`, each turned by its EXIF
    `orientations` entry (default 1); None where it failed. Runs on CPU tensors too (tests)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    bufs = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        out: list[torch.Tensor | None] = list(decode_jpeg(bufs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        # One bad image fails the whole batch: retry one by one to isolate it.
        out = []
        for b in bufs:
            try:
                out.append(decode_jpeg(b, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
    if orientations is not None:
        out = [None if t is None else orient(t, o) for t, o in zip(out, orientations)]
    return out


def decode_batch_device(datas: Sequence[bytes | None], spec: PixelSpec, device: torch.device,
                        cpu_map: Callable[..., Iterable] = map, draft: bool = True
                        ) -> tuple[torch.Tensor, np.ndarray]:
    """The score stage's GPU decode: (N, 3, h, w) float 0..255 on `device` and a decoded-ok
    mask. nvJPEG for the JPEGs nvjpeg_orientation accepts, oriented on device; every other
    image (and any JPEG nvJPEG fails on) by decode_cpu through `cpu_map` (a thread pool's map)."""
    ok = np.zeros(len(datas), bool)
    th, tw = spec.size
    out = torch.zeros((len(datas), 3, th, tw), device=device, dtype=torch.float32)
    orients = [nvjpeg_orientation(d) for d in datas]
    jpeg_idx = [j for j, o in enumerate(orients) if o is not None]
    decoded = decode_jpegs_gpu([datas[j] for j in jpeg_idx], device,  # type: ignore[misc]
                               [orients[j] for j in jpeg_idx])
    good = [(j, t) for j, t in zip(jpeg_idx, decoded) if t is not None]
    if good:
        out[[j for j, _ in good]] = resize_batch_gpu([t for _, t in good], spec)
        ok[[j for j, _ in good]] = True
    rest = [j for j in range(len(datas)) if not ok[j]]
    arrs = list(cpu_map(lambda j: decode_cpu(datas[j], spec, draft), rest))
    for j, a in zip(rest, arrs):
        if a is not None:
            out[j] = torch.from_numpy(a).to(device).permute(2, 0, 1).float()
            ok[j] = True
    return out, ok


def resize_batch_gpu(images: Sequence[torch.Tensor], spec: PixelSpec) -> torch.Tensor:
    """CHW uint8 device tensors of any sizes -> NCHW float 0..255 at spec.size. Images that
    share a size are resized in one call (web crawls have a few common sizes)."""
    th, tw = spec.size
    out = torch.empty((len(images), 3, th, tw), device=images[0].device, dtype=torch.float32)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault((im.shape[-2], im.shape[-1]), []).append(i)
    for idx in by_shape.values():
        out[idx] = tensor_resize_crop(torch.stack([images[i] for i in idx]), spec)
    return out
