"""Image tags: heads in LAION's published formats load and score like the reference nets,
the stage scores stored embeddings, select rejects with tag reasons, `mmcurate train-head` fits a
watermark head on synthetic overlays that it then detects on held-out overlay texts, and a
pipeline run carries the tags to the manifest and the report."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from filters.image_tags import TAG_RULES, UNSCORED
from models.heads import HeadFormatError, load_head
from pipeline.config import RecipeError, SelectConfig, recipe_from_dict
from pipeline.stage import RunContext
from stages.image_tags import ImageTagsStage
from stages.select import SelectStage
from tests.conftest import recipe_dict

D = 32  # the tiny CLIP's embedding width


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- reference nets, written from the published architectures --------------------------------

class Layers(nn.Module):
    """LAION's heads keep their nn.Sequential as `self.layers` (state dict keys layers.N.*)."""

    def __init__(self, *mods: nn.Module):
        super().__init__()
        self.layers = nn.Sequential(*mods)

    def forward(self, x):
        return self.layers(x)


def aesthetic_mlp(d: int, relu: bool) -> nn.Module:
    """improved-aesthetic-predictor's MLP: d->1024->128->64->16->1; the linearMSE heads have the
    ReLUs commented out, the reluMSE ones have them."""
    def act():
        return [nn.ReLU()] if relu else []
    return Layers(nn.Linear(d, 1024), *act(), nn.Dropout(0.2), nn.Linear(1024, 128), *act(),
                  nn.Dropout(0.2), nn.Linear(128, 64), *act(), nn.Dropout(0.1), nn.Linear(64, 16),
                  *act(), nn.Linear(16, 1)).eval()


def h14_nsfw(d: int) -> nn.Module:
    """LAION's ViT-H-14 NSFW head: five (Linear, ReLU, Dropout) blocks, then two Linear; saved
    here as a bare nn.Sequential (keys N.*), which loads the same."""
    dims = [d, 64, 128, 64, 32, 16]
    mods: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(0.2)]
    return nn.Sequential(*mods, nn.Linear(16, 8), nn.Linear(8, 1)).eval()


class NsfwPort(nn.Module):
    """LAION's PyTorch port of the Keras NSFW detector (ViT-B-32 layout)."""

    def __init__(self, d: int):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("norm_mean", torch.randn(d, generator=g) * 0.05)
        self.register_buffer("norm_variance", torch.rand(d, generator=g) * 0.01 + 0.001)
        self.linear_1, self.linear_2, self.linear_3 = nn.Linear(d, 32), nn.Linear(32, 32), nn.Linear(32, 1)

    def forward(self, x):
        x = (x - self.norm_mean) / (self.norm_variance.sqrt() + 1e-10)
        x = torch.relu(self.linear_2(torch.relu(self.linear_1(x))))
        return torch.sigmoid(self.linear_3(x))

    def laion_state_dict(self) -> dict:
        sd = {k: v for k, v in self.state_dict().items() if k.startswith("linear_")}
        return {"norm.mean": self.norm_mean, "norm.variance": self.norm_variance, **sd}


def _ref(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy().reshape(-1)


@pytest.mark.parametrize("fmt", ["aesthetic_linearMSE", "aesthetic_reluMSE", "nsfw_h14", "linear",
                                 "nsfw_torch_port", "nsfw_keras_npz"])
def test_laion_formats_score_like_the_reference_net(fmt, tmp_path):
    torch.manual_seed(0)
    d = 768 if fmt.startswith("aesthetic") else D
    x = _unit(16, d)
    if fmt.startswith("aesthetic"):
        ref = aesthetic_mlp(d, relu=fmt.endswith("reluMSE"))
        path = tmp_path / "sac+logos+ava1-l14.pth"
        torch.save(ref.state_dict(), path)
        want = _ref(ref, x)
    elif fmt == "nsfw_h14":
        ref = h14_nsfw(d)
        path = tmp_path / "h14_nsfw.pth"
        torch.save(ref.state_dict(), path)
        want = _ref(ref, x)
    elif fmt == "linear":
        ref = nn.Linear(d, 1)
        path = tmp_path / "sa_0_4_vit_b_32_linear.pth"
        torch.save(ref.state_dict(), path)
        want = _ref(ref, x)
    else:
        ref = NsfwPort(d).eval()
        want = _ref(ref, x)
        if fmt == "nsfw_torch_port":
            path = tmp_path / "clip_ViT-B-32_openai_binary_nsfw_head.pth"
            torch.save(ref.laion_state_dict(), path)
        else:  # what README's Keras export snippet writes: kernels (in, out), Keras layout
            path = tmp_path / "clip_autokeras_binary_nsfw.npz"
            np.savez(path, norm_mean=ref.norm_mean.numpy()[None], norm_variance=ref.norm_variance.numpy()[None],
                     **{f"dense_{i}_kernel": getattr(ref, f"linear_{i + 1}").weight.detach().numpy().T
                        for i in range(3)},
                     **{f"dense_{i}_bias": getattr(ref, f"linear_{i + 1}").bias.detach().numpy() for i in range(3)},
                     output=np.array("sigmoid"))
    head = load_head(path)
    assert head.in_dim == d
    got = head.score(x)
    assert got.dtype == np.float32 and got.shape == (16,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if fmt.startswith("nsfw_") and fmt != "nsfw_h14":
        assert ((got > 0) & (got < 1)).all()  # the NSFW detector's sigmoid probability


def test_bad_heads_are_refused_with_advice(tmp_path):
    two = tmp_path / "two_class.pth"
    torch.save(nn.Linear(D, 2).state_dict(), two)
    with pytest.raises(HeadFormatError, match="positive_class"):
        load_head(two)
    p = load_head(two, output="softmax", positive_class=0).score(_unit(4, D))
    assert ((p > 0) & (p < 1)).all()
    # LAION-5B-WatermarkDetection ships an EfficientNet image classifier, not a CLIP head.
    effnet = tmp_path / "watermark_model_v1.pt"
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3), "blocks.0.0.conv_dw.weight": torch.zeros(8, 1, 3, 3),
                "classifier.0.weight": torch.zeros(625, 1536)}, effnet)
    with pytest.raises(HeadFormatError, match="EfficientNet.*train-head"):
        load_head(effnet)
    keras_dir = tmp_path / "clip_autokeras_binary_nsfw"
    keras_dir.mkdir()
    (keras_dir / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(HeadFormatError, match="Keras SavedModel.*npz"):
        load_head(keras_dir)
    with pytest.raises(HeadFormatError, match="npz"):
        load_head(keras_dir / "saved_model.pb")


# ---- the stage ---------------------------------------------------------------------------------

def _heads(tmp_path) -> dict[str, str]:
    torch.manual_seed(1)
    nsfw = tmp_path / "nsfw.pth"
    torch.save(NsfwPort(D).laion_state_dict(), nsfw)
    wm = tmp_path / "wm.pth"
    torch.save(nn.Linear(D, 1).state_dict(), wm)
    aes = tmp_path / "aes.pth"
    torch.save(aesthetic_mlp(D, relu=False).state_dict(), aes)
    return {"nsfw": str(nsfw), "watermark": str(wm), "aesthetic": str(aes)}


def test_stage_scores_embeddings_and_explains_nulls(tmp_path):
    heads = _heads(tmp_path)
    x = _unit(5, D, seed=4)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).reshape(-1), pa.float16()), D,
                                            mask=pa.array([False, True, False, False, False]))
    models = ["m", "m", "m", "other", None]
    stage = ImageTagsStage({"nsfw": {"path": heads["nsfw"], "name": "laion-nsfw-b32"},
                            "watermark": {"path": heads["watermark"], "clip_model": "m"},
                            "aesthetic": {"path": heads["aesthetic"]}}, RunContext("/tmp", None))
    out = stage.process(pa.table({"img_emb": emb, "clip_model": pa.array(models, pa.string())}))
    for c in ("nsfw_score", "watermark_score", "aesthetic_score"):
        assert out.schema.field(c).type == pa.float32()
    assert out.column("nsfw_head").to_pylist() == ["laion-nsfw-b32"] * 5
    assert out.column("watermark_head").to_pylist() == ["wm"] * 5
    assert out.column("tag_error").to_pylist() == [None, "no_embedding", None, "watermark:model_mismatch",
                                                   "watermark:model_mismatch"]
    ref = load_head(heads["aesthetic"]).score(x.astype(np.float16).astype(np.float32))
    aes = out.column("aesthetic_score").to_pylist()
    assert aes[1] is None and np.allclose([aes[i] for i in (0, 2, 3, 4)], ref[[0, 2, 3, 4]], atol=1e-5)
    wm = out.column("watermark_score").to_pylist()
    assert wm[0] is not None and wm[1] is None and wm[3] is None and wm[4] is None
    bad = x[:1].copy()
    bad[0, 0] = np.nan
    out = stage.process(pa.table({"img_emb": pa.FixedSizeListArray.from_arrays(pa.array(bad.reshape(-1)), D),
                                  "clip_model": ["m"]}))
    assert out.column("nsfw_score").to_pylist() == [None]
    assert out.column("tag_error").to_pylist() == ["nsfw:not_finite;watermark:not_finite;aesthetic:not_finite"]
    # Rows of several CLIP widths (en and zh models): a head scores only rows of its own width.
    mixed = pa.array([x[0].tolist(), x[1, :16].tolist()], pa.list_(pa.float32()))
    out = stage.process(pa.table({"img_emb": mixed, "clip_model": pa.array(["m", "m"])}))
    assert out.column("nsfw_score").to_pylist()[1] is None
    assert out.column("tag_error").to_pylist()[1] == "nsfw:dim_mismatch;watermark:dim_mismatch;aesthetic:dim_mismatch"


def test_image_tags_config_errors(tmp_path):
    from pipeline.config import load_recipe

    base = {"input": {"path": "urls.parquet"}, "workdir": "wd"}
    with pytest.raises(RecipeError, match="image_tags needs at least one head"):
        recipe_from_dict({**base, "stages": ["download", "score", "image_tags", "select"]})
    with pytest.raises(RecipeError, match="select.max_nsfw: needs the image_tags stage with a nsfw head"):
        recipe_from_dict({**base, "select": {"max_nsfw": 0.5}})
    with pytest.raises(RecipeError, match="image_tags cannot run inside bootstrap rounds"):
        recipe_from_dict({**base, "stages": ["download", "score", "image_tags", "select"], "bootstrap": {},
                          "image_tags": {"nsfw": {"path": "x.pth"}}})
    with pytest.raises(RecipeError, match="add score before it"):
        recipe_from_dict({**base, "stages": ["download", "image_tags", "select"],
                          "image_tags": {"nsfw": {"path": "x.pth"}}})
    # Relative head paths are relative to the recipe file.
    heads = _heads(tmp_path)
    (tmp_path / "r.yaml").write_text("input: {path: urls.parquet}\nworkdir: wd\n"
                                     "stages: [download, score, image_tags, select]\n"
                                     "image_tags: {watermark: {path: wm.pth}}\nselect: {max_watermark: 0.5}\n")
    r = load_recipe(tmp_path / "r.yaml")
    assert r.image_tags.watermark.path == heads["watermark"]


# ---- select ------------------------------------------------------------------------------------

def test_select_rejects_with_tag_reasons():
    cfg = SelectConfig(max_nsfw=0.5, max_watermark=0.8, min_aesthetic=5.0)
    stage = SelectStage(cfg, RunContext("/tmp", None))
    cols = [r.column for r in TAG_RULES]
    assert set(cols) <= set(stage.needed_columns(["uid", *cols]))
    rows = [  # nsfw, watermark, aesthetic -> reason
        (0.1, 0.1, 6.0, None), (0.9, 0.1, 6.0, "nsfw"), (0.1, 0.95, 6.0, "watermark"),
        (0.1, 0.1, 4.0, "low_aesthetic"), (0.9, 0.95, 4.0, "nsfw"), (None, 0.1, 6.0, UNSCORED),
        (0.5, 0.8, 5.0, None),  # thresholds themselves pass
    ]
    t = pa.table({"uid": pa.array(range(len(rows)), pa.int64()),
                  **{c: pa.array([r[i] for r in rows], pa.float32()) for i, c in enumerate(cols)}})
    out = stage.process(t)
    assert out.column("reason").to_pylist() == [r[3] for r in rows]
    assert out.column("decision").to_pylist() == ["kept" if r[3] is None else "rejected" for r in rows]
    # Off by default: no rule reads the tag columns.
    plain = SelectStage(SelectConfig(), RunContext("/tmp", None))
    assert not set(cols) & set(plain.needed_columns(["uid", *cols]))


# ---- train-head on synthetic watermarks ----------------------------------------------------------

def _overlay_rows(n: int, seed: int, split: str) -> tuple[list[bytes], list[int]]:
    """Synthetic scenes, about half with a watermark banner; `split` picks the overlay texts."""
    from synth.overlay import add_overlay
    from synth.scenes import encode, render_scene, sample_scene

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        img = render_scene(sample_scene(rng, f"wm{seed}-{i}"))
        y = int(rng.random() < 0.5)
        if y:
            img, _ = add_overlay(img, rng, split, style="banner")
        images.append(encode(img, "jpeg", 90))
        labels.append(y)
    return images, labels


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from models.clip.testing import tiny_open_clip_dir

    return tiny_open_clip_dir(tmp_path_factory.mktemp("clip") / "oc")


@pytest.fixture(scope="module")
def wm_head(clip_dir, tmp_path_factory):
    """A watermark head fitted by `mmcurate train-head` on image bytes of synthetic scenes with
    and without a banner watermark (the overlay texts of the "fit" half)."""
    from pipeline.cli import main

    d = tmp_path_factory.mktemp("wm")
    images, labels = _overlay_rows(600, seed=11, split="fit")
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "has_watermark": labels}), d / "wm.parquet")
    out = d / "heads" / "wm.pth"
    rc = main(["train-head", str(d / "wm.parquet"), "--out", str(out), "--label-col", "has_watermark",
               "--image-col", "image", "--backend-path", str(clip_dir), "--arch", "mlp", "--tag", "watermark"])
    assert rc == 0
    return out


def test_train_head_detects_watermarks_on_held_out_overlays(wm_head, clip_dir):
    from models.clip.factory import load_backend
    from pipeline.head_cli import evaluate
    from PIL import Image

    meta = json.loads(wm_head.with_name("wm.pth.json").read_text())
    assert meta["task"] == "binary" and meta["output"] == "sigmoid" and meta["tag"] == "watermark"
    assert meta["clip_model"] == f"open_clip:{clip_dir}" and meta["embed_dim"] == D
    head = load_head(wm_head)
    assert head.format == "sequential" and head.name == "wm" and head.clip_model == meta["clip_model"]
    # Scenes and overlay texts the head never saw.
    images, labels = _overlay_rows(300, seed=12, split="held_out")
    be = load_backend({"kind": "open_clip", "path": str(clip_dir)}, device="cpu")
    x = be.encode_images([Image.open(io.BytesIO(b)).convert("RGB") for b in images])
    held = evaluate(np.array(labels), head.score(x), "binary")
    print("watermark head: fit rows", meta["metrics"]["fit"], "; held-out rows (fit texts)",
          meta["metrics"]["held_out"], "; unseen scenes and texts", held)
    # A random-init 32-px CLIP is a weak feature extractor. Measured: AUC 0.995 on the 480 fit
    # rows, 0.70 on the 120 held-out rows, 0.71 on 300 unseen scenes with unseen texts (0.5: chance).
    assert held["auc"] > 0.65
    assert meta["metrics"]["held_out"]["auc"] > 0.65


def test_train_head_regression_and_bad_rows(tmp_path, capsys):
    from pipeline.cli import main

    x = _unit(400, D, seed=5)
    w = np.random.default_rng(6).normal(size=D)
    rating = 5 + 2 * (x @ w) + np.random.default_rng(7).normal(scale=0.05, size=400)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), D)
    pq.write_table(pa.table({"img_emb": emb, "clip_model": ["m"] * 400, "rating": rating}), tmp_path / "a.parquet")
    out = tmp_path / "aes.pth"
    assert main(["train-head", str(tmp_path / "a.parquet"), "--out", str(out), "--label-col", "rating",
                 "--tag", "aesthetic", "--steps", "800"]) == 0
    printed = capsys.readouterr().out
    assert "regression" in printed and "held_out: n=80" in printed
    meta = json.loads((tmp_path / "aes.pth.json").read_text())
    assert meta["task"] == "regression" and meta["clip_model"] == "m" and meta["output"] == "identity"
    assert meta["metrics"]["held_out"]["pearson"] > 0.95
    head = load_head(out)  # LAION's linear format: weight/bias
    assert head.format == "linear" and abs(float(head.score(x[:1])[0]) - rating[0]) < 0.5
    # Bad rows name the row and what to do.
    pq.write_table(pa.table({"img_emb": emb.slice(0, 3), "rating": [1.0, None, 2.0]}), tmp_path / "b.parquet")
    with pytest.raises(SystemExit, match="row 1: label column 'rating' is empty"):
        main(["train-head", str(tmp_path / "b.parquet"), "--out", str(tmp_path / "b.pth"), "--label-col", "rating"])
    pq.write_table(pa.table({"image": [b"not an image", b"x"], "label": [0, 1]}), tmp_path / "c.parquet")
    with pytest.raises(SystemExit, match="needs a CLIP model"):
        main(["train-head", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "c.pth")])


# ---- a pipeline run with the stage ---------------------------------------------------------------

STAGES = ["download", "annotate", "score", "image_tags", "select", "export"]
PERMISSIVE = {"min_short_side": 0, "max_aspect_ratio": 100, "reject_uninformative": False,
              "reject_filenames": False, "reject_hashtag_only": False, "min_en_words": 0, "min_en_chars": 0,
              "min_zh_words": 0, "max_repetition": 1}


def test_pipeline_tags_rows_select_rejects_and_report_shows_them(local_run, corpus, clip_dir, wm_head, tmp_path):
    from pipeline.report import build_report
    from pipeline.runner import run
    from pipeline.store import ColumnStore

    wd_ref, _ = local_run
    wd = tmp_path / "wd"
    shutil.copytree(wd_ref, wd, ignore=shutil.ignore_patterns("dedup", "select", "export", "summary.json"))
    heads = _heads(tmp_path)
    d = recipe_dict(corpus, wd, stages=STAGES, select=PERMISSIVE,
                    score={"device": "cpu", "batch_size": 32,
                           "backends": {"*": {"kind": "open_clip", "path": str(clip_dir)}}},
                    image_tags={"nsfw": {"path": heads["nsfw"]}, "watermark": {"path": str(wm_head)},
                                "aesthetic": {"path": heads["aesthetic"], "name": "aesthetic-test"}})
    run(recipe_from_dict(d), quiet=True)
    tags = pq.read_table(wd / "image_tags")
    assert tags.schema.field("watermark_score").type == pa.float32()
    # Thresholds that cut each score's tail (the heads are random or synthetic): select re-runs alone.
    q = {c: np.nanpercentile(np.array(tags.column(c).to_pylist(), float), p)
         for c, p in (("nsfw_score", 80), ("watermark_score", 70), ("aesthetic_score", 30))}
    th = {"max_nsfw": float(q["nsfw_score"]), "max_watermark": float(q["watermark_score"]),
          "min_aesthetic": float(q["aesthetic_score"])}
    summary = run(recipe_from_dict({**d, "select": {**PERMISSIVE, **th}}), quiet=True)
    assert summary["balanced"]
    m = pq.read_table(wd / "export" / "manifest").to_pylist()
    reasons = {r["reason"] for r in m}
    assert {"nsfw", "watermark", "low_aesthetic"} <= reasons, reasons
    sc = pq.read_table(wd / "score", columns=["uid", "img_emb"])
    no_emb = {u for u, e in zip(sc.column("uid").to_pylist(), sc.column("img_emb").is_null().to_pylist()) if e}
    assert no_emb  # the corpus has broken images
    for r in m:
        if r["uid"] in no_emb:
            assert r["nsfw_score"] is None and r["tag_error"] == "no_embedding"
        if r["decision"] == "kept":
            assert r["nsfw_score"] <= th["max_nsfw"] and r["watermark_score"] <= th["max_watermark"]
            assert r["aesthetic_score"] >= th["min_aesthetic"]
        if r["reason"] == "watermark":
            assert r["watermark_score"] > th["max_watermark"] and r["watermark_head"] == "wm"
        if r["reason"] == "low_aesthetic":
            assert r["aesthetic_score"] < th["min_aesthetic"] and r["aesthetic_head"] == "aesthetic-test"
    # A threshold whose score column no stage produced stops select with an error.
    store = ColumnStore(wd, ["download", "annotate", "score"])
    with pytest.raises(RecipeError, match="max_nsfw is set but no stage produced nsfw_score"):
        SelectStage(SelectConfig(max_nsfw=0.5), RunContext(str(wd), None)).prepare(store)
    # The report: one histogram per tag with its threshold, thumbnails per tag reason.
    html = build_report(wd, out=tmp_path / "report" / "index.html", samples_per_reason=2).read_text()
    tag_part = html[html.index('<section id="tags">'):]
    tag_part = tag_part[:tag_part.index("</section>")]
    for tag, key in (("nsfw", "max_nsfw"), ("watermark", "max_watermark"), ("aesthetic", "min_aesthetic")):
        assert f"{tag} score by decision" in tag_part and f"{key} {th[key]:g}" in tag_part
    for reason in ("nsfw", "watermark", "low_aesthetic"):
        block = tag_part[tag_part.index(f"rejected: {reason}</h3>"):]
        assert block.index("<img") < block.index("</div>")  # at least one thumbnail under the heading
