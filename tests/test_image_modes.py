"""Every image Pillow can open decodes, and every stage sees the same pixels.

The samples (synth/image_modes.py) are real photos from scikit-image's wheel written in every
mode Pillow can write x every format that holds it, animations, EXIF orientations 1-8, and, held
out, the image files in skimage's wheel that other encoders wrote. For each one:

* annotate (`inspect_image`) decodes it, its width/height are those of the displayed picture,
  and its colour signature / pHash are measured on those pixels;
* the one decoder (`to_rgb`) shows the picture a viewer sees (numpy reference, alpha over white);
* every consumer yields those pixels: score's CPU decode, score's GPU-path decode (run on CPU
  tensors), capfilt's `_decode`, the trainer's `load_image`, export's `to_jpeg` (read back by a
  reader that ignores EXIF, as many do), within JPEG tolerance where a JPEG is re-encoded.

Run with -s to see the matrix (or `python bench/image_modes.py`).
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")
torch = pytest.importorskip("torch")

from filters.image import inspect_image, phash_image, to_rgb  # noqa: E402
from models.albef.data import load_image  # noqa: E402
from models.clip.transforms import PixelSpec, pil_to_uint8  # noqa: E402
from models.gpu_decode import decode_cpu, decode_jpegs_gpu, nvjpeg_orientation  # noqa: E402
from stages.capfilt import CapfiltStage  # noqa: E402
from stages.export import to_jpeg  # noqa: E402
from stages.score import ScoreConfig, ScoreStage  # noqa: E402
from synth.image_modes import FORMATS, MODES, Sample, animations, held_out, matrix, oriented  # noqa: E402

# Square CLIP-style input, and a non-square squash whose JPEG draft request must follow the
# EXIF rotation.
SPECS = (PixelSpec(size=(64, 64)), PixelSpec(size=(40, 72), resize_mode="squash"))
TRAIN_SIZE = 48
# Mean absolute difference (0-255) allowed after a 4x box downscale, which keeps the comparison
# about the picture (orientation, colours, alpha background, 16-bit scaling), not about dither
# patterns or JPEG ringing.
# ICO holds a thumbnail the writer resampled with its own filter (a dithered 1-bit image
# shifts most), so those cells get the loosest bound.
PICTURE_TOL = {"lossless": 2.0, "lossy": 6.0, "resized": 16.0}
# Full-resolution mean abs diff after export's quality-95 re-encode (4:2:0 chroma: a tiny
# palette GIF with hard colour edges is the worst case in the set, ~4.3).
JPEG_TOL = 6.0
# annotate reads a YCbCr JPEG's colour from a 1/8-scale DCT decode (same picture, cheaper), so
# its 4x4 colour grid is close to, not equal to, the full decode's.
SIG_TOL = {"jpeg_draft": 6.0, "exact": 0.0}
RESIZE_TOL = 4.0      # torch antialiased resize vs PIL's (GPU path vs CPU path)
NVJPEG_TOL = 1.5      # torchvision's JPEG decoder vs Pillow's, full resolution


def _small(a: np.ndarray) -> np.ndarray:
    im = Image.fromarray(a)
    return np.asarray(im.resize((max(1, im.width // 4), max(1, im.height // 4)), Image.Resampling.BOX),
                      np.float64)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def _score_stage() -> ScoreStage:
    st = ScoreStage(ScoreConfig(decode="gpu"))
    st.pool = ThreadPoolExecutor(2)
    return st


def _capfilt_decode(datas: list[bytes]) -> list:
    # The method under test needs only its thread pool (None: decode inline); building a whole
    # stage would need captioner and filter models.
    st = CapfiltStage.__new__(CapfiltStage)
    st._pool = None
    return CapfiltStage._decode(st, datas)


def check(s: Sample, score: ScoreStage) -> list[str]:
    """Every disagreement for one sample (empty: decodes and every consumer agrees)."""
    bad: list[str] = []
    r = inspect_image(s.data)
    if not r["decode_ok"]:
        return [f"annotate: decode_error={r['decode_error']}"]
    ref_im = to_rgb(s.data)
    ref = np.asarray(ref_im)
    exp = s.expected
    if s.resized:  # ICO holds a thumbnail: compare with the expected picture at that size
        exp = np.asarray(Image.fromarray(exp).resize(ref_im.size, Image.Resampling.LANCZOS))
    if (r["width"], r["height"]) != ref_im.size:
        bad.append(f"annotate size {r['width']}x{r['height']} != decoded {ref_im.size}")
    if ref.shape != exp.shape:
        bad.append(f"decoded {ref.shape[1]}x{ref.shape[0]} != shown {exp.shape[1]}x{exp.shape[0]}")
        return bad
    tol = PICTURE_TOL["resized" if s.resized else "lossy" if s.lossy else "lossless"]
    if (d := _mad(_small(ref), _small(exp))) > tol:
        bad.append(f"to_rgb is not the shown picture (diff {d:.1f} > {tol})")
    luma_path = r["image_format"] == "JPEG" and r["image_mode"] == "RGB"
    sig = np.frombuffer(r["color_sig"], np.uint8).reshape(4, 4, 3)
    if (d := _mad(sig, np.asarray(ref_im.resize((4, 4), Image.Resampling.BOX)))) > SIG_TOL[
            "jpeg_draft" if luma_path else "exact"]:
        bad.append(f"annotate color_sig not from the decoded pixels (diff {d:.1f})")
    # pHash of a YCbCr JPEG comes from libjpeg's own luma (not RGB -> L): a bit or two may flip.
    if (d := bin(int(r["phash"], 16) ^ int(phash_image(ref_im), 16)).count("1")) > (4 if luma_path else 0):
        bad.append(f"annotate phash not from the decoded pixels ({d} bits)")
    for spec in SPECS:
        want = pil_to_uint8(ref_im, spec)
        cpu = decode_cpu(s.data, spec, draft=False)
        if cpu is None or not np.array_equal(cpu, want):
            bad.append(f"score CPU {spec.resize_mode}: not the decoded pixels")
        cpu_draft = decode_cpu(s.data, spec, draft=True)
        if cpu_draft is None or (d := _mad(cpu_draft, want)) > RESIZE_TOL:
            bad.append(f"score CPU draft {spec.resize_mode}: differs ({'none' if cpu_draft is None else round(d, 1)})")
        be = SimpleNamespace(pixel=spec, device=torch.device("cpu"))
        px, ok = score._decode_gpu(be, [s.data])
        gpu = px[0].permute(1, 2, 0).numpy()
        if not ok[0] or (d := _mad(gpu, want)) > RESIZE_TOL:
            bad.append(f"score GPU path {spec.resize_mode}: differs ({'failed' if not ok[0] else round(d, 1)})")
    o = nvjpeg_orientation(s.data)
    if o is not None:  # the nvJPEG branch itself, full size, before any resize
        t = decode_jpegs_gpu([s.data], torch.device("cpu"), [o])[0]
        dev = None if t is None else t.permute(1, 2, 0).numpy()
        if dev is None or dev.shape != ref.shape or (d := _mad(dev, ref)) > NVJPEG_TOL:
            bad.append(f"GPU JPEG decode: {'failed' if dev is None else dev.shape if dev.shape != ref.shape else round(d, 2)}")
    cap = _capfilt_decode([s.data])[0]
    if cap is None or not np.array_equal(np.asarray(cap), ref):
        bad.append("capfilt: not the decoded pixels")
    tr = load_image(s.data, TRAIN_SIZE).permute(1, 2, 0).numpy()
    want_tr = np.asarray(ref_im.resize((TRAIN_SIZE, TRAIN_SIZE), Image.Resampling.BICUBIC))
    if not np.array_equal(tr, want_tr):
        bad.append(f"trainer load_image: differs ({_mad(tr, want_tr):.1f})")
    jpg = to_jpeg(s.data, r["image_format"], 95)
    with Image.open(io.BytesIO(jpg)) as im:  # a reader that ignores EXIF
        if im.format != "JPEG":
            bad.append(f"export: key.jpg is {im.format}")
        if int(im.getexif().get(0x0112, 1) or 1) != 1:
            bad.append("export: key.jpg still needs an EXIF rotation")
        plain = np.asarray(im.convert("RGB"))
    if plain.shape[1::-1] != (r["width"], r["height"]):
        bad.append(f"export: jpg {plain.shape[1]}x{plain.shape[0]} != json {r['width']}x{r['height']}")
    elif (d := _mad(plain, ref)) > JPEG_TOL:
        bad.append(f"export: key.jpg differs from the decoded pixels ({d:.1f})")
    return bad


@pytest.fixture(scope="module")
def score():
    st = _score_stage()
    yield st
    st.pool.shutdown()


@pytest.fixture(scope="module")
def generated():
    return matrix()


def _table(status: dict, results: dict) -> str:
    w = 7
    lines = ["mode    " + "".join(f"{f:>{w}}" for f in FORMATS)]
    for m in MODES:
        cells = []
        for f in FORMATS:
            st = status[m, f]
            cells.append({"refused": "-", "converted": "cv"}.get(st) or ("ok" if not results[m, f] else "FAIL"))
        lines.append(f"{m:8}" + "".join(f"{c:>{w}}" for c in cells))
    held = [k for k, v in status.items() if v == "held"]
    ok = sum(1 for k in held if not results[k])
    n = {v: sum(1 for x in status.values() if x == v) for v in ("refused", "converted")}
    lines.append(f"{len(MODES)} modes x {len(FORMATS)} formats: {len(held)} cells hold the mode, "
                 f"{ok} decode and agree; {n['converted']} 'cv' (Pillow converts the mode on save), "
                 f"{n['refused']} '-' (Pillow cannot write it)")
    return "\n".join(lines)


def test_every_mode_format_decodes_the_same_everywhere(generated, score):
    samples, status = generated
    results = {(s.mode, s.fmt): check(s, score) for s in samples}
    print("\n" + _table(status, results))
    failed = {f"{m}.{f}": v for (m, f), v in results.items() if v}
    assert not failed, failed
    assert len(samples) >= 51  # the matrix itself did not shrink


@pytest.mark.parametrize("kind", ["animations", "oriented", "held_out"])
def test_animations_orientations_and_held_out_files(kind, score):
    samples = {"animations": animations, "oriented": oriented, "held_out": held_out}[kind]()
    failed = {s.name: b for s in samples if (b := check(s, score))}
    print(f"\n{kind}: {len(samples) - len(failed)}/{len(samples)} decode and agree")
    assert not failed, failed
    assert len(samples) >= {"animations": 4, "oriented": 32, "held_out": 25}[kind]
    if kind == "animations":
        assert all(inspect_image(s.data)["is_animated"] for s in samples)
    if kind == "oriented":  # the orientation JPEGs were turned on the device path, not sent to CPU
        assert [nvjpeg_orientation(s.data) for s in samples if s.fmt == "JPEG"] == list(range(1, 9))
