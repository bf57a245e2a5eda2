"""score stage on CPU with tiny offline models: row alignment, error values, batch invariance."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pydantic import ValidationError

from models.clip import load_backend
from models.clip.testing import tiny_chinese_clip_dir, tiny_open_clip_dir
from stages.score import ScoreConfig, ScoreStage, route


def _jpeg(seed: int, size=(64, 48), fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return (tiny_open_clip_dir(tmp_path_factory.mktemp("oc")),
            tiny_chinese_clip_dir(tmp_path_factory.mktemp("cc")))


def _stage(oc_dir, batch_size=4, **kw) -> ScoreStage:
    cfg = ScoreConfig(backends={"*": {"kind": "open_clip", "path": str(oc_dir)}},
                      device="cpu", batch_size=batch_size, num_decode_threads=2, **kw)
    st = ScoreStage(cfg, None)
    st.setup(None)
    return st


def _table(n: int) -> pa.Table:
    images = [_jpeg(i, size=(40 + 7 * i, 30 + 3 * i)) for i in range(n)]
    images[2] = _jpeg(2, fmt="PNG")
    return pa.table({"uid": pa.array(range(n), pa.int64()),
                     "image": pa.array(images, pa.binary()),
                     "caption_clean": [f"a photo number {i}" for i in range(n)],
                     "lang": ["en"] * n, "decode_ok": [True] * n})


def test_outputs_row_aligned_and_normalised(dirs):
    st = _stage(dirs[0])
    out = st.process(_table(9))
    assert out.num_rows == 9 and out.column_names == list(ScoreStage.provides)
    assert out.schema.field("img_emb").type == pa.list_(pa.float16(), 32)
    assert out.schema.field("clip_score").type == pa.float32()
    img = np.array(out.column("img_emb").to_pylist(), np.float32)
    txt = np.array(out.column("txt_emb").to_pylist(), np.float32)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=2e-3)
    np.testing.assert_allclose(out.column("clip_score").to_numpy(), (img * txt).sum(1), atol=1e-3)
    assert out.column("clip_error").null_count == 9
    # Row i's image embedding is the backend's embedding of image i (alignment, not just shape).
    be = st.backends["*"]
    from models.gpu_decode import open_image
    t = _table(9)
    ref = be.encode_images([open_image(b, be.pixel, True) for b in t.column("image").to_pylist()])
    np.testing.assert_allclose(img, ref, atol=3e-3)


def test_same_rows_same_scores_across_splits_and_orders(dirs):
    t = _table(10)
    full = _stage(dirs[0], batch_size=3).process(t).column("clip_score").to_numpy()
    parts = [_stage(dirs[0], batch_size=8).process(t.slice(s, 4)) for s in (0, 4, 8)]
    split = np.concatenate([p.column("clip_score").to_numpy() for p in parts])
    np.testing.assert_allclose(split, full, atol=1e-3)
    perm = np.random.default_rng(0).permutation(10)
    shuffled = _stage(dirs[0], batch_size=5).process(t.take(perm)).column("clip_score").to_numpy()
    np.testing.assert_allclose(shuffled, full[perm], atol=1e-3)


def test_bad_rows_become_error_values(dirs):
    st = _stage(dirs[0])
    good = _jpeg(0)
    t = pa.table({
        "image": pa.array([good, None, b"", good[:40], b"<html>404</html>", good, good], pa.binary()),
        "caption": ["ok", "no image", "empty bytes", "truncated", "not an image", "   ", None],
        "lang": ["en"] * 7, "decode_ok": [True, None, None, True, True, True, True],
    })
    out = st.process(t)  # no caption_clean: falls back to caption
    err = out.column("clip_error").to_pylist()
    assert err == [None, "no_image", "no_image", "decode_error", "decode_error",
                   "empty_caption", "empty_caption"]
    score = out.column("clip_score")
    assert score.is_valid().to_pylist() == [True] + [False] * 6
    # What could be computed still is: text embedding without image, image without text.
    assert out.column("txt_emb").is_valid().to_pylist() == [True, True, True, True, True, False, False]
    assert out.column("img_emb").is_valid().to_pylist() == [True, False, False, False, False, True, True]
    assert all(m is not None for m in out.column("clip_model").to_pylist())


def test_decode_ok_false_is_respected(dirs):
    st = _stage(dirs[0])
    t = pa.table({"image": pa.array([_jpeg(0)], pa.binary()), "caption_clean": ["x"],
                  "lang": ["en"], "decode_ok": [False]})
    assert st.process(t).column("clip_error").to_pylist() == ["decode_error"]


def test_language_routing_to_two_backends(dirs, tmp_path):
    oc_dir, cc_dir = dirs
    # Different embedding sizes: variable-size list columns, each row as long as its model's.
    cfg = ScoreConfig(backends={"en": {"kind": "open_clip", "path": str(oc_dir)},
                                "zh": {"kind": "chinese_clip", "path": str(cc_dir)}}, device="cpu")
    mixed = ScoreStage(cfg, None)
    mixed.setup(None)
    t = pa.table({"image": pa.array([_jpeg(0), _jpeg(1)], pa.binary()), "caption_clean": ["red", "红色"],
                  "lang": ["en", "zh"], "decode_ok": [True, True]})
    out = mixed.process(t)
    dims = [len(v) for v in out.column("img_emb").to_pylist()]
    assert dims == [mixed.backends["en"].embed_dim, mixed.backends["zh"].embed_dim] and dims[0] != dims[1]
    for col in ("img_emb", "txt_emb"):
        for v in out.column(col).to_pylist():
            assert abs(np.linalg.norm(np.asarray(v, np.float32)) - 1) < 3e-3
    # Same size: a second open_clip seed plays the "zh" model.
    oc2 = tiny_open_clip_dir(tmp_path / "oc2", seed=1)
    cfg = ScoreConfig(backends={"en": {"kind": "open_clip", "path": str(oc_dir), "threshold": 0.28},
                                "zh": {"kind": "open_clip", "path": str(oc2), "threshold": 0.3}},
                      device="cpu", num_decode_threads=2)
    st = ScoreStage(cfg, None)
    st.setup(None)
    t = pa.table({"image": pa.array([_jpeg(i) for i in range(4)], pa.binary()),
                  "caption_clean": ["red", "红色", "blue", "bleu"],
                  "lang": ["en", "zh-Hans", "en", "fr"], "decode_ok": [True] * 4})
    out = st.process(t)
    models = out.column("clip_model").to_pylist()
    assert models[0] == models[2] == st.backends["en"].name
    assert models[1] == st.backends["zh"].name != models[0]
    assert out.column("clip_error").to_pylist()[3] == "no_backend:fr"
    zh_ref = load_backend({"kind": "open_clip", "path": str(oc2)}).encode_texts(["红色"])[0]
    np.testing.assert_allclose(out.column("txt_emb").to_pylist()[1], zh_ref, atol=3e-3)


def test_chinese_clip_through_stage(dirs):
    cfg = ScoreConfig(backends={"*": {"kind": "chinese_clip", "path": str(dirs[1])}}, device="cpu")
    st = ScoreStage(cfg, None)
    st.setup(None)
    out = st.process(pa.table({"image": pa.array([_jpeg(1), _jpeg(2)], pa.binary()),
                               "caption_clean": ["两只猫", "查看原网页"], "lang": ["zh", "zh"],
                               "decode_ok": [True, True]}))
    assert out.column("clip_error").null_count == 2
    assert out.schema.field("img_emb").type == pa.list_(pa.float16(), 16)


def test_config_and_resources():
    with pytest.raises(ValidationError):
        ScoreConfig(backends={"*": {"kind": "open_clip", "model": "ViT-B-32"}}, decod="gpu")
    with pytest.raises(ValidationError):
        ScoreConfig(backends={})
    cfg = ScoreConfig(backends={"*": {"kind": "open_clip", "model": "ViT-B-32"}}, device="cpu")
    assert ScoreStage(cfg, None).resources().gpus == 0
    cfg = ScoreConfig(backends={"*": {"kind": "open_clip", "model": "ViT-B-32"}}, device="cuda",
                      gpus=0.5)
    assert ScoreStage(cfg, None).resources().gpus == 0.5
    assert route("zh-Hant", ["zh", "*"]) == "zh" and route(None, ["en"]) is None
