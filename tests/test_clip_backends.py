"""CLIP backends: offline loading of local checkpoints, unit-norm outputs, batch invariance."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub import
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from models.clip import BackendSpec, ClipBackend, load_backend, parse_spec
from models.clip.chinese_clip_backend import pixel_spec_from_processor
from models.clip.testing import TINY_OPEN_CLIP_CFG, tiny_chinese_clip_dir, tiny_open_clip_dir


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(64, 48), (40, 90), (32, 32), (100, 20), (17, 33)]
    return [Image.fromarray(rng.integers(0, 255, (sizes[i % 5][1], sizes[i % 5][0], 3), np.uint8))
            for i in range(n)]


@pytest.fixture(scope="module")
def oc_dir(tmp_path_factory):
    return tiny_open_clip_dir(tmp_path_factory.mktemp("oc"))


@pytest.fixture(scope="module")
def cc_dir(tmp_path_factory):
    return tiny_chinese_clip_dir(tmp_path_factory.mktemp("cc"))


@pytest.fixture(scope="module")
def oc(oc_dir):
    return load_backend({"kind": "open_clip", "path": str(oc_dir), "device": "cpu"})


def _check_unit(e: np.ndarray, n: int, d: int) -> None:
    assert e.shape == (n, d) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_open_clip_local_dir_offline(oc):
    assert oc.embed_dim == TINY_OPEN_CLIP_CFG["embed_dim"]
    assert oc.device.type == "cpu" and oc.dtype == torch.float32
    _check_unit(oc.encode_images(_images(7)), 7, 32)
    _check_unit(oc.encode_texts(["a red square", "two cats", "", "x" * 500]), 4, 32)


def test_open_clip_weights_round_trip(oc_dir, oc):
    # Reloading the saved dir gives the same model: weights really came from disk.
    again = load_backend({"kind": "open_clip", "path": str(oc_dir), "device": "cpu"})
    np.testing.assert_allclose(oc.encode_texts(["blue circle"]), again.encode_texts(["blue circle"]),
                               atol=1e-6)


def test_open_clip_checkpoint_file_with_arch_name(oc_dir, oc, tmp_path):
    import open_clip

    cfg_file = tmp_path / "mmcurate-tiny-test.json"
    cfg_file.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(cfg_file)
    b = load_backend({"kind": "open_clip", "model": "mmcurate-tiny-test",
                      "path": str(oc_dir / "open_clip_pytorch_model.bin")})
    np.testing.assert_allclose(b.encode_texts(["two dogs"]), oc.encode_texts(["two dogs"]), atol=1e-6)


def test_preprocess_matches_open_clip_transform(oc_dir, oc):
    import open_clip

    _, _, val = open_clip.create_model_and_transforms(f"local-dir:{oc_dir}")
    for im in _images(5):
        np.testing.assert_allclose(oc.preprocess(im).numpy(), val(im).numpy(), atol=1e-5)


def test_batch_split_invariance(oc_dir):
    ims = _images(9)
    texts = [f"caption {i}" for i in range(9)]
    small = load_backend({"kind": "open_clip", "path": str(oc_dir), "batch_size": 2})
    big = load_backend({"kind": "open_clip", "path": str(oc_dir), "batch_size": 64})
    np.testing.assert_allclose(small.encode_images(ims), big.encode_images(ims), atol=1e-5)
    np.testing.assert_allclose(small.encode_texts(texts), big.encode_texts(texts), atol=1e-5)
    # Order: reversing the inputs reverses the rows.
    np.testing.assert_allclose(big.encode_images(ims[::-1]), big.encode_images(ims)[::-1], atol=1e-5)


def test_chinese_clip_local_dir_offline(cc_dir):
    b = load_backend({"kind": "chinese_clip", "path": str(cc_dir), "device": "cpu"})
    assert b.embed_dim == 16 and b.name.startswith("chinese_clip:")
    assert b.pixel is not None and b.pixel.size == (32, 32) and b.pixel.resize_mode == "squash"
    e = b.encode_images(_images(4))
    t = b.encode_texts(["红色的方形", "两只猫在草地上", "", "查看原网页"])
    _check_unit(e, 4, 16)
    _check_unit(t, 4, 16)
    # Our tensor preprocessing feeds the model what its own HF processor would.
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(str(cc_dir))
    im = _images(1)[0]
    ref = proc(images=[im], return_tensors="pt")["pixel_values"][0]
    assert (b.preprocess(im) - ref).abs().max() < 0.05  # resize kernels differ slightly
    s = ClipBackend.similarity(e, t)
    assert s.shape == (4,) and np.all(np.abs(s) <= 1.0 + 1e-5)


def test_pixel_spec_from_shortest_edge_processor():
    from transformers.models.chinese_clip import ChineseCLIPImageProcessor

    spec = pixel_spec_from_processor(ChineseCLIPImageProcessor())  # shortest_edge 224 + crop
    assert spec.size == (224, 224) and spec.resize_mode == "shortest"


def test_spec_parsing_and_errors():
    s = parse_spec("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert (s.kind, s.model, s.pretrained) == ("open_clip", "ViT-B-32", "laion2b_s34b_b79k")
    assert parse_spec("chinese_clip:OFA-Sys/chinese-clip-vit-base-patch16").model.startswith("OFA")
    assert parse_spec("mmcurate:/ckpt/round1").path == "/ckpt/round1"
    with pytest.raises(ValidationError):
        BackendSpec(kind="open_clip", model="ViT-B-32", pretraind="typo")
    with pytest.raises(ValidationError, match="needs `path`"):
        BackendSpec(kind="mmcurate")
    with pytest.raises(ValueError, match="must look like"):
        parse_spec("clip:whatever")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backend({"kind": "open_clip", "path": "/nonexistent/ckpt"})
    with pytest.raises(ValueError, match="row-aligned"):
        ClipBackend.similarity(np.zeros((2, 4)), np.zeros((3, 4)))
