import io

import numpy as np
from PIL import Image, ImageDraw

from filters.dedup import near_dup_of, near_sigs, star_groups
from filters.image import NEAR_SIG_BYTES, inspect_image


def _scene(seed: int, color=(200, 30, 30), w=400, h=300) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (220, 220, 215))
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.integers(40, w - 40), rng.integers(40, h - 40)
        d.ellipse((x - 25, y - 25, x + 25, y + 25), fill=color)
    return img


def _jpeg(img: Image.Image, q: int = 80) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=q)
    return b.getvalue()


def _rows(images: list[Image.Image]):
    stats = [inspect_image(_jpeg(im)) for im in images]
    sigs, valid = near_sigs([s["near_sig"] for s in stats])
    w = np.array([s["width"] for s in stats], float)
    h = np.array([s["height"] for s in stats], float)
    return sigs, valid, np.log(w / h), w * h


def test_signature_size_and_missing():
    assert len(inspect_image(_jpeg(_scene(0)))["near_sig"]) == NEAR_SIG_BYTES
    assert inspect_image(b"not an image")["near_sig"] is None
    sigs, valid = near_sigs([None, b"short"])
    assert not valid.any()


def test_crop_and_resize_copy_is_found_and_other_scenes_are_not():
    base = _scene(1)
    w, h = base.size
    cropped = base.crop((int(w * 0.03), int(h * 0.05), w - int(w * 0.02), h - int(h * 0.04))).resize((300, 216))
    recoloured = _scene(1, color=(30, 160, 30))  # same layout, other colour: not a duplicate
    images = [base, cropped, recoloured] + [_scene(s) for s in range(2, 8)]
    sigs, valid, asp, area = _rows(images)
    rep = near_dup_of(np.arange(len(images)), sigs, valid, asp, area=area, neighbors=8)
    assert rep[1] == 0 and rep[0] == 0
    assert rep[2] == 2
    assert (rep[3:] == np.arange(3, len(images))).all()


def test_star_groups_do_not_chain():
    # 0~1, 1~2 but not 0~2: 2 must not join 0's group.
    centre = star_groups(3, np.array([0, 1]), np.array([1, 2]), np.array([0, 1, 2]))
    assert centre.tolist() == [0, 0, 2]


def test_near_sigs_reads_arrow_columns_without_python_rows():
    import pyarrow as pa

    good = bytes(range(256)) * (NEAR_SIG_BYTES // 256) + bytes(NEAR_SIG_BYTES % 256)
    col = pa.chunked_array([pa.array([good, None], pa.binary()), pa.array([b"x" * 10, good[::-1]], pa.binary())])
    sigs, valid = near_sigs(col)
    assert valid.tolist() == [True, False, False, True]
    assert sigs[0].tobytes() == good and sigs[3].tobytes() == good[::-1]
    # A sliced array starts at its own offset.
    sliced_sigs, sliced_valid = near_sigs(pa.array([None, good, good[::-1]], pa.binary()).slice(1))
    assert sliced_valid.all() and sliced_sigs[1].tobytes() == good[::-1]


def test_rms_prefilter_drops_far_candidates_and_verify_matches_either_direction():
    from filters.dedup import near_candidates, near_summary, near_verify

    images = [_scene(s) for s in range(6)]
    w, h = images[0].size
    images.append(images[0].crop((int(w * 0.04), 0, w, h)))
    sigs, valid, asp, _ = _rows(images)
    a_all, b_all = near_candidates(sigs, 6, None)
    a, b = near_candidates(sigs, 6, 5.0)
    vec = near_summary(sigs)
    rms = np.sqrt(((vec[a_all] - vec[b_all]) ** 2).mean(1))
    assert len(a) == int((rms <= 5.0).sum()) < len(a_all)
    pair = np.array([0]), np.array([6])
    assert near_verify(sigs, asp, *pair)[0] and near_verify(sigs, asp, pair[1], pair[0])[0]
    assert not near_verify(sigs, asp, np.array([0]), np.array([1]))[0]
