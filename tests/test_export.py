"""Export's parts without a run: the tar plan, img2dataset's resize modes and output formats on
real photos, and the one schema covering every column a registered stage adds."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from filters.resize import resize_image
from pipeline.config import ExportConfig
from pipeline.stage import RunContext
from stages.export import ExportStage, plan_tars, sample_key


def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def _bytes(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("total,per", [(91, 16), (160, 40), (7, 10), (1000, 333)])
def test_plan_cuts_evenly(total, per):
    split = {0: total // 3, 1: total - total // 3 - total // 4, 2: total // 4}
    starts = plan_tars(split, None, per, None)
    sizes = np.diff(np.append(starts, total))
    assert len(starts) == -(-total // per) and sizes.max() - sizes.min() <= 1 and sizes.max() <= per


def test_plan_by_bytes_balances_bytes():
    rng = np.random.default_rng(0)
    b = rng.integers(1_000, 200_000, 500)
    starts = plan_tars({0: 300, 1: 200}, b, 10_000, 5_000_000)
    per_tar = [int(x.sum()) for x in np.split(b, starts[1:])]
    assert len(per_tar) == -(-int(b.sum()) // 5_000_000)
    assert max(per_tar) - min(per_tar) < 2 * 200_000  # even up to a sample or two


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_resize_modes(photo):
    im = _photo(photo)  # 512x512, 600x400, 451x300
    w, h = im.size
    assert resize_image(im, "no").size == (w, h)
    kr = resize_image(im, "keep_ratio", 128)
    assert min(kr.size) == 128 and abs(kr.width / kr.height - w / h) < 0.02
    assert resize_image(im, "center_crop", 128).size == (128, 128)
    b = resize_image(im, "border", 128)
    assert b.size == (128, 128)
    if w != h:  # the padding is black, the centre is the photo
        px = np.asarray(b)
        assert px[0, 0].sum() == 0 and px[64, 64].sum() > 0
    assert resize_image(im, "keep_ratio", 4096, only_if_bigger=True).size == (w, h)
    assert max(resize_image(im, "no", max_side=200).size) == 200
    assert resize_image(im, "no", max_side=5000).size == (w, h)


def _stage(tmp_path, **cfg) -> ExportStage:
    return ExportStage(ExportConfig(**cfg), RunContext(workdir=str(tmp_path), recipe=None))


@pytest.mark.parametrize("fmt,pil", [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_output_formats_and_sizes(tmp_path, fmt, pil):
    src = _photo("coffee").convert("RGBA")  # alpha: composited on white when re-encoded
    st = _stage(tmp_path, output_format=fmt, resize_mode="center_crop", image_size=96)
    out, w, h = st._encode(_bytes(src, "PNG"), "PNG")
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == pil and im.size == (w, h) == (96, 96) and im.mode == "RGB"


def test_jpeg_passes_through_untouched(tmp_path):
    data = _bytes(_photo("astronaut"), "JPEG")
    out, w, h = _stage(tmp_path)._encode(data, "JPEG")
    assert out == data and (w, h) == (512, 512)
    out, w, h = _stage(tmp_path, max_side=100)._encode(data, "JPEG")
    assert out != data and (w, h) == (100, 100)


def test_keys_have_no_dots_and_sort_by_uid():
    keys = [sample_key("a1b2c3d4e5", u) for u in (0, 9, 10, 123456789)]
    assert keys == sorted(keys) and not any("." in k for k in keys)


def test_schema_covers_every_stage_column():
    from pipeline.registry import stage_class
    from pipeline.config import STAGE_ORDER
    from stages.export_schema import MANIFEST_COLUMNS, SAMPLE_FIELDS, hf_features

    missing = {name: [c for c in stage_class(name).provides
                      if c not in MANIFEST_COLUMNS and c != "image" and not c.endswith("_emb")]
               for name in STAGE_ORDER}
    assert not any(missing.values()), f"add these to stages/export_schema.py MANIFEST_COLUMNS: {missing}"
    pytest.importorskip("datasets")
    assert set(hf_features()["json"]) == set(SAMPLE_FIELDS)


def test_capfilt_scores_name_their_filter():
    from filters.capfilt_rules import KeepRules
    from models.capfilt_backends import CaptionFilter
    from stages.capfilt import CapfiltConfig, CapfiltStage
    from stages.select import capfilt_verdicts

    class Named(CaptionFilter):
        name = "albef_itm:round_0-filter"

        def score_groups(self, images, texts):
            return [np.full(len(g), 0.9, np.float32) for g in texts]

    st = CapfiltStage(CapfiltConfig(filter={"kind": "albef", "path": "/unused"}, captioner=None,
                                    n_captions=0), None)
    st.captioners, st.filters = {}, {k: Named() for k in st.filter_specs}
    img = _bytes(_photo("coffee").resize((64, 48)), "PNG")
    batch = pa.table({"uid": pa.array([0], pa.int64()), "image": pa.array([img], pa.binary()),
                      "caption": ["a cup of coffee on a saucer"], "decode_ok": [True], "lang": ["en"]})
    out = st.process(batch)
    [cands] = out.column("capfilt_candidates").to_pylist()
    assert [c["scorer"] for c in cands] == ["albef_itm:round_0-filter"]
    kept, _ = capfilt_verdicts(out, KeepRules.from_config(st.cfg))
    assert kept[0][0]["scorer"] == "albef_itm:round_0-filter"
