"""The device decode path's pieces, run on CPU tensors (torchvision decodes lists on CPU too)."""
import io
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from filters.image import to_rgb
from models.clip.transforms import PixelSpec, pil_to_uint8
from models.gpu_decode import decode_cpu, decode_jpegs_gpu, is_jpeg, nvjpeg_orientation, resize_batch_gpu
from stages.score import ScoreConfig, ScoreStage


def _jpeg(w: int, h: int, seed: int) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)
    arr = np.clip(arr + rng.integers(0, 8, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_batched_decode_isolates_bad_jpeg():
    good = [_jpeg(64, 48, 0), _jpeg(50, 70, 1)]
    bad = good[0][:30]
    assert is_jpeg(bad) and not is_jpeg(b"\x89PNG....") and not is_jpeg(None)
    out = decode_jpegs_gpu([good[0], bad, good[1]], torch.device("cpu"))
    assert out[1] is None
    assert out[0].shape == (3, 48, 64) and out[2].shape == (3, 70, 50)


def test_device_resize_close_to_cpu_path():
    spec = PixelSpec(size=(32, 32))
    datas = [_jpeg(64, 48, 0), _jpeg(50, 70, 1), _jpeg(64, 48, 2), _jpeg(20, 16, 3)]
    dec = decode_jpegs_gpu(datas, torch.device("cpu"))
    dev = resize_batch_gpu(dec, spec).permute(0, 2, 3, 1).numpy()
    cpu = np.stack([decode_cpu(d, spec, draft=False) for d in datas]).astype(np.float32)
    assert dev.shape == cpu.shape == (4, 32, 32, 3)
    # Different resize kernels and JPEG decoders: close, not identical.
    assert np.abs(dev - cpu).mean() < 4.0


def _oriented_jpeg(displayed: np.ndarray, orientation: int) -> bytes:
    # Stored pixels from the displayed ones, per the EXIF definition of each orientation.
    stored = {1: lambda d: d, 2: lambda d: d[:, ::-1], 3: lambda d: d[::-1, ::-1],
              4: lambda d: d[::-1], 5: lambda d: d.swapaxes(0, 1), 6: lambda d: np.rot90(d, 1),
              7: lambda d: np.rot90(d, 2).swapaxes(0, 1), 8: lambda d: np.rot90(d, -1)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored(displayed))).save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


def test_score_gpu_path_applies_exif_orientation():
    # nvJPEG ignores EXIF: a phone photo taken upright reached the model lying on its side. The
    # score stage's device path (run here on CPU tensors) must give the displayed picture.
    shown = np.asarray(Image.open(io.BytesIO(_jpeg(72, 40, 5))).convert("RGB"))
    spec = PixelSpec(size=(24, 40), resize_mode="squash")  # non-square: a swap changes the result
    want = pil_to_uint8(Image.fromarray(shown), spec).astype(np.float32)
    datas = [_oriented_jpeg(shown, o) for o in range(1, 9)]
    st = ScoreStage(ScoreConfig(decode="gpu"))
    st.pool = ThreadPoolExecutor(1)
    px, ok = st._decode_gpu(SimpleNamespace(pixel=spec, device=torch.device("cpu")), datas)
    st.pool.shutdown()
    assert ok.all()
    for o in range(8):
        assert np.abs(px[o].permute(1, 2, 0).numpy() - want).mean() < 4.0, f"orientation {o + 1}"


def test_device_orientation_and_routing():
    shown = np.asarray(Image.open(io.BytesIO(_jpeg(60, 36, 7))).convert("RGB"))
    datas = [_oriented_jpeg(shown, o) for o in range(1, 9)]
    assert [nvjpeg_orientation(d) for d in datas] == list(range(1, 9))
    dec = decode_jpegs_gpu(datas, torch.device("cpu"), list(range(1, 9)))
    for d, t in zip(datas, dec):  # full size, before any resize: the same picture as to_rgb
        ref = np.asarray(to_rgb(d), np.float32)
        assert t.shape == (3, 36, 60) and np.abs(t.permute(1, 2, 0).numpy() - ref).mean() < 1.5
    buf = io.BytesIO()
    Image.open(io.BytesIO(datas[0])).convert("CMYK").save(buf, "JPEG")
    png = io.BytesIO()
    Image.fromarray(shown).save(png, "PNG")
    grey = io.BytesIO()
    Image.fromarray(shown).convert("L").save(grey, "JPEG")
    # CMYK JPEGs and non-JPEGs take the CPU path; grey JPEGs nvJPEG expands like to_rgb does.
    assert [nvjpeg_orientation(b.getvalue()) for b in (buf, png, grey)] == [None, None, 1]
    assert nvjpeg_orientation(None) is None and nvjpeg_orientation(b"\xff\xd8\xff garbage") is None


def _variants() -> list[bytes]:
    """JPEG headers of many shapes: EXIF with other tags, grey, CMYK, RGB kept as RGB (Adobe),
    progressive, 4:4:4, XMP-only orientation, MPO-free big EXIF, comments."""
    base = Image.open(io.BytesIO(_jpeg(48, 32, 9))).convert("RGB")
    out = []
    for o in range(0, 10):
        exif = Image.Exif()
        exif[0x010F] = "Canon"
        exif[0x0132] = "2024:01:01 10:00:00"
        if o:
            exif[0x0112] = o
        for kw in ({}, {"progressive": True}, {"subsampling": 0}, {"comment": b"hello"}):
            buf = io.BytesIO()
            base.save(buf, "JPEG", exif=exif, **kw)
            out.append(buf.getvalue())
    for mode, kw in (("L", {}), ("CMYK", {}), ("RGB", {"keep_rgb": True})):
        buf = io.BytesIO()
        base.convert(mode).save(buf, "JPEG", **kw)
        out.append(buf.getvalue())
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
           b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    buf = io.BytesIO()
    base.save(buf, "JPEG", xmp=xmp)
    out.append(buf.getvalue())
    return out


def test_nvjpeg_header_walk_agrees_with_pillow():
    # The GPU path reads orientation with its own marker walk (Pillow's open is ~10x slower);
    # whenever it sends an image to nvJPEG, its orientation must be the one to_rgb applies, and
    # the colours must be ones nvJPEG decodes like Pillow (YCbCr or grey). Real headers, then
    # the same headers with random bytes changed.
    from filters.image import orientation

    rng = np.random.default_rng(0)
    variants = _variants()
    gpu = checked = 0
    for k, d in enumerate(variants * 12):
        if k >= len(variants):
            b = bytearray(d)
            for at in rng.integers(2, min(len(b), 400), size=int(rng.integers(1, 4))):
                b[at] = int(rng.integers(0, 256))
            d = bytes(b)
        o = nvjpeg_orientation(d)
        if o is None:
            continue
        gpu += 1
        try:
            im = Image.open(io.BytesIO(d))
        except Exception:  # noqa: BLE001 - Pillow refuses it: to_rgb would fail too
            continue
        checked += 1
        assert im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L"), (k, im.mode)
        assert orientation(im) == o, k
    routed = [nvjpeg_orientation(d) for d in variants]
    # Absent (0 here: the tag is left out) is 1; 1-8 go to nvJPEG in all four encodings, with
    # grey; an out-of-range value (9), CMYK, RGB-coded and XMP-only orientation go to the CPU.
    assert routed[:40] == [1 if o == 0 else o if o <= 8 else None for o in range(10) for _ in range(4)]
    assert routed[40:] == [1, None, None, None]
    assert checked > 200, (gpu, checked)
