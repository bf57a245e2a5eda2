"""capfilt: scripted scores through the keep rules (applied by select), language handling, error
values, and the real backends (tiny offline HF BLIP, the project's own ALBEF checkpoint, a tiny
CLIP)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from albef_helpers import toy_sample, toy_tokenizer, tiny_overrides
from filters.capfilt_rules import KeepRules
from models.capfilt_backends import (AlbefItmFilter, BlipCaptioner, BlipItmFilter, Captioner,
                                     CaptionFilter, ClipFilter, load_captioner, load_filter)
from stages.capfilt import (CAPTION_LIST, Candidate, CapfiltConfig, CapfiltStage, capfilt_pairs,
                            decide, synthetic_candidates)

BLIP_WORDS = "a picture of red green blue yellow square on the left right top bottom".split()


def _png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---- stubs: scripted captions and scores -------------------------------------------------------
class StubCaptioner(Captioner):
    """Captions keyed by the image's top-left pixel colour; records how often it ran."""

    def __init__(self, by_color: dict[tuple, list[str]]):
        self.by_color = by_color
        self.calls: list[int] = []
        self.langs: list = []
        self.name = "stub"

    def caption(self, images, n, top_p=0.9, max_len=30, beam=None, min_len=3, seed=None, lang=None):
        self.calls.append(len(images))
        self.langs.append(lang)
        return [self.by_color[im.getpixel((0, 0))][:n] for im in images]


class StubFilter(CaptionFilter):
    def __init__(self, scores: dict[str, float]):
        self.scores = scores
        self.name = "stub"

    def score_groups(self, images, texts):
        return [np.array([self.scores[t] for t in g], np.float32) for g in texts]


def _stage(scores, captions, **cfg) -> CapfiltStage:
    cfg.setdefault("captioner", {"kind": "albef", "path": "/unused"})
    cfg.setdefault("filter", {"kind": "albef", "path": "/unused"})
    st = CapfiltStage(CapfiltConfig(**cfg), None)
    # Inject stubs for every configured key instead of loading models.
    st.captioners = {k: (captions[k] if isinstance(captions, dict) and k in captions else captions)
                     for k in st.captioner_specs}
    st.filters = {k: StubFilter(scores) for k in st.filter_specs}
    return st


RED, BLUE, GREEN = (200, 30, 30), (30, 30, 200), (30, 200, 30)


def _kept(st: CapfiltStage, out: pa.Table) -> tuple[list, list]:
    """What select makes of capfilt's output under the stage's recipe section: kept captions
    (primary first) and pass per row. capfilt itself writes neither."""
    from stages.select import capfilt_verdicts

    assert "captions" not in out.column_names and "capfilt_pass" not in out.column_names
    return capfilt_verdicts(out, KeepRules.from_config(st.cfg))


def _table(rows: list[dict]) -> pa.Table:
    types = {"image": pa.binary(), "caption": pa.string(), "decode_ok": pa.bool_(), "lang": pa.string(),
             "caption_clean": pa.string()}
    t = pa.table({"uid": pa.array(range(len(rows)), pa.int64())})
    for k, typ in types.items():
        # caption_clean only when a row has one: as in a run without annotate
        if k != "caption_clean" or any(k in r for r in rows):
            t = t.append_column(k, pa.array([r.get(k) for r in rows], typ))
    return t


# ---- pure rules ----------------------------------------------------------------------------
def test_decide_rules():
    c = [Candidate("web", "web", 0.5), Candidate("s1", "synthetic", 0.7),
         Candidate("s2", "synthetic", 0.9), Candidate("s3", "synthetic", 0.2)]
    kept, ok = decide(c, web_threshold=0.5, synth_threshold=0.6, max_synthetic=1)
    assert ok and [k.text for k in kept] == ["web", "s2"]          # web at exactly 0.5 passes
    kept, _ = decide(c, 0.5, 0.6, max_synthetic=5)
    assert [k.text for k in kept] == ["web", "s2", "s1"]
    kept, _ = decide(c, 0.5, 0.6, max_synthetic=5, primary="best")
    assert [k.text for k in kept] == ["s2", "s1", "web"]
    kept, ok = decide(c, 0.51, 0.6, max_synthetic=0)
    assert not ok and kept == []                                   # web fails, no synthetic allowed
    kept, ok = decide(c, 0.51, 0.6, max_synthetic=2)
    assert ok and [k.text for k in kept] == ["s2", "s1"]           # best synthetic becomes primary
    # with a margin, a synthetic caption must outscore the web one: 0.5 + 0.25 lets only s2 in
    kept, _ = decide(c, 0.5, 0.0, max_synthetic=5, synth_margin=0.25)
    assert [k.text for k in kept] == ["web", "s2"]
    kept, _ = decide(c, 0.5, 0.0, max_synthetic=5, synth_margin=0.0)
    assert [k.text for k in kept] == ["web", "s2", "s1"]
    kept, ok = decide([Candidate("x", "synthetic", 0.3)], 0.5, 0.2, 3, synth_margin=0.5)
    assert ok and kept[0].text == "x"  # no web caption to beat
    kept, ok = decide([Candidate("x", "synthetic", None)], 0.0, 0.0, 3)
    assert not ok                                                  # unscored never kept


def test_synthetic_candidates_dedup_and_language():
    c = synthetic_candidates("A red square", ["a red square", " two ", "two", "", "红色方块"], "en", True)
    assert [(x.text, x.score is None) for x in c] == [("two", False), ("红色方块", True)]
    c = synthetic_candidates("", ["红色方块", "red"], "zh", True)
    assert [(x.text, x.score is None) for x in c] == [("红色方块", False), ("red", True)]
    assert all(x.score is not None for x in synthetic_candidates("", ["red"], "zh", False))


# ---- stage with scripted scores --------------------------------------------------------------
def test_rules_applied_per_sample():
    cap = StubCaptioner({RED: ["red one", "red two", "red one"], BLUE: ["blue one", "blue two", "x"],
                         GREEN: ["green one", "green two", "green three"]})
    scores = {"web red": 0.8, "red one": 0.7, "red two": 0.4,
              "web blue": 0.3, "blue one": 0.2, "blue two": 0.1, "x": 0.49,
              "web green": 0.1, "green one": 0.95, "green two": 0.6, "green three": 0.55}
    st = _stage(scores, cap, n_captions=3, web_threshold=0.5, synth_threshold=0.5, max_synthetic=2)
    out = st.process(_table([
        {"image": _png(RED), "caption": "web red", "decode_ok": True},
        {"image": _png(BLUE), "caption": "web blue", "decode_ok": True},
        {"image": _png(GREEN), "caption": "web green", "decode_ok": True},
    ]))
    assert out.schema.field("capfilt_candidates").type == CAPTION_LIST
    caps, passed = _kept(st, out)
    assert [[(c["text"], c["origin"]) for c in r] for r in caps] == [
        [("web red", "web"), ("red one", "synthetic")],
        [],
        [("green one", "synthetic"), ("green two", "synthetic")],
    ]
    assert passed == [True, False, True]
    assert np.allclose(out.column("capfilt_web_score").to_pylist(), [0.8, 0.3, 0.1])
    cands = out.column("capfilt_candidates").to_pylist()
    # duplicates removed; every candidate reported with its score
    assert [c["text"] for c in cands[0]] == ["web red", "red one", "red two"]
    assert [c["text"] for c in cands[1]] == ["web blue", "blue one", "blue two", "x"]
    assert cands[1][3]["score"] == pytest.approx(0.49)
    assert out.column("capfilt_status").to_pylist() == ["ok"] * 3
    assert cap.calls == [3]  # one captioner call for the batch


def test_filter_threshold_override_and_caption_clean():
    cap = StubCaptioner({RED: ["syn"]})
    st = _stage({"clean web": 0.3, "syn": 0.25}, cap, n_captions=1,
                filter={"kind": "albef", "path": "/unused", "web_threshold": 0.28, "synth_threshold": 0.2})
    out = st.process(_table([{"image": _png(RED), "caption": "RAW http://x", "caption_clean": "clean web",
                              "decode_ok": True},
                             {"image": _png(RED), "caption": "call 13800138000", "caption_clean": None,
                              "decode_ok": True}]))
    caps, _ = _kept(st, out)
    assert [c["text"] for c in caps[0]] == ["clean web", "syn"]
    # a null cleaned caption never falls back to the raw one (it may hold redacted PII)
    assert [c["text"] for c in caps[1]] == ["syn"]
    assert out.column("capfilt_web_score").to_pylist()[1] is None


def test_decode_failures_are_null_not_crash():
    cap = StubCaptioner({RED: ["s"]})
    st = _stage({"ok": 0.9, "s": 0.9}, cap, n_captions=1)
    out = st.process(_table([
        {"image": b"<html>not an image</html>", "caption": "ok", "decode_ok": False},
        {"image": b"\xff\xd8\xff garbage", "caption": "ok", "decode_ok": None},  # no annotate verdict
        {"image": None, "caption": "ok", "decode_ok": None},
        {"image": _png(RED), "caption": "ok", "decode_ok": True},
    ]))
    caps, passed = _kept(st, out)
    assert passed == [None, None, None, True]
    assert caps[:3] == [None, None, None]
    assert out.column("capfilt_candidates").to_pylist()[:3] == [None, None, None]
    assert out.column("capfilt_status").to_pylist() == ["decode_error", "decode_error", "no_image", "ok"]
    assert cap.calls == [1]


def test_empty_web_caption_uses_synthetic_only():
    cap = StubCaptioner({RED: ["syn a", "syn b"]})
    st = _stage({"syn a": 0.4, "syn b": 0.6}, cap, n_captions=2)
    out = st.process(_table([{"image": _png(RED), "caption": "   ", "decode_ok": True}]))
    assert out.column("capfilt_web_score").to_pylist() == [None]
    assert [c["text"] for c in _kept(st, out)[0][0]] == ["syn b"]


@pytest.mark.parametrize("mode", ["web_only", "skip"])
def test_language_mismatch(mode):
    en_cap = StubCaptioner({RED: ["a red thing"], BLUE: ["a blue thing"]})
    st = _stage({"web en": 0.9, "a red thing": 0.9, "蓝色的方块": 0.9}, en_cap, n_captions=1,
                captioner={"kind": "blip", "path": "/unused"},  # BLIP defaults to languages [en]
                on_language_mismatch=mode)
    out = st.process(_table([
        {"image": _png(RED), "caption": "web en", "decode_ok": True},
        {"image": _png(BLUE), "caption": "蓝色的方块", "decode_ok": True},  # zh by script
    ]))
    assert en_cap.calls == [1]  # the zh row is never captioned by the English model
    caps, passed = _kept(st, out)
    assert [c["text"] for c in caps[0]] == ["web en", "a red thing"]
    if mode == "web_only":
        assert [c["text"] for c in caps[1]] == ["蓝色的方块"]
        assert passed == [True, True]
        assert out.column("capfilt_status").to_pylist() == ["ok", "web_only"]
    else:
        assert caps[1] is None and passed == [True, None]
        assert out.column("capfilt_web_score").to_pylist()[1] is None
        assert out.column("capfilt_status").to_pylist() == ["ok", "skipped_language"]


def test_per_language_captioners_and_language_match():
    en = StubCaptioner({RED: ["red square", "红色"]})
    zh = StubCaptioner({BLUE: ["蓝色方块", "blue square"]})
    scores = {"red": 0.9, "red square": 0.8, "红色": 0.99, "蓝": 0.9, "蓝色方块": 0.8, "blue square": 0.99}
    st = _stage(scores, {"en": en, "zh": zh}, n_captions=2, max_synthetic=3,
                captioner={"en": {"kind": "albef", "path": "/a"}, "zh": {"kind": "albef", "path": "/b"}})
    out = st.process(_table([
        {"image": _png(RED), "caption": "red", "decode_ok": True},
        {"image": _png(BLUE), "caption": "蓝", "decode_ok": True, "lang": "zh"},
    ]))
    assert en.calls == [1] and zh.calls == [1]
    # each row's language (detected when the row has none) is passed on to steer the decoder
    assert en.langs == [["en"]] and zh.langs == [["zh"]]
    caps, _ = _kept(st, out)
    # off-language synthetic captions are reported unscored and never kept
    assert [c["text"] for c in caps[0]] == ["red", "red square"]
    assert [c["text"] for c in caps[1]] == ["蓝", "蓝色方块"]
    cands = out.column("capfilt_candidates").to_pylist()
    assert cands[0][2] == {"text": "红色", "origin": "synthetic", "score": None, "scorer": None}


def test_any_language_leaves_the_decoder_free():
    cap = StubCaptioner({RED: ["red square"]})
    st = _stage({"red": 0.9, "red square": 0.8}, cap, n_captions=1, synthetic_language="any")
    st.process(_table([{"image": _png(RED), "caption": "red", "decode_ok": True}]))
    assert cap.langs == [None]


def test_filter_only_and_config_errors():
    st = _stage({"w": 0.7}, None, captioner=None, n_captions=0)
    out = st.process(_table([{"image": _png(RED), "caption": "w", "decode_ok": True}]))
    assert out.column("capfilt_status").to_pylist() == ["filter_only"]
    assert _kept(st, out)[1] == [True]
    f = {"kind": "albef", "path": "/x"}
    with pytest.raises(ValidationError, match="n_captions"):
        CapfiltConfig(filter=f, n_captions=2)  # no captioner
    with pytest.raises(ValidationError, match="beam"):
        CapfiltConfig(filter=f, captioner=f, n_captions=5, beam=3)
    with pytest.raises(ValidationError):
        CapfiltConfig(filter=f, captioner=f, n_captoins=5)  # extra keys are errors
    with pytest.raises(ValidationError, match="clip"):
        CapfiltConfig(filter={"kind": "clip"}, n_captions=0)
    cfg = CapfiltConfig(filter={"en": f, "*": {"kind": "blip_itm", "model": "Salesforce/blip-itm-base-coco"}},
                        captioner=f, n_captions=1)
    assert set(cfg.filters()) == {"en", "*"} and set(cfg.captioners()) == {"*"}


def test_no_filter_for_language():
    st = _stage({"w": 0.7}, None, captioner=None, n_captions=0,
                filter={"en": {"kind": "albef", "path": "/x"}})
    out = st.process(_table([{"image": _png(RED), "caption": "红色方块", "decode_ok": True}]))
    assert out.column("capfilt_status").to_pylist() == ["no_filter"]
    assert _kept(st, out)[1] == [None]


# ---- tiny HF BLIP, saved and loaded offline ----------------------------------------------------
@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor)

    out = tmp_path_factory.mktemp("blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + BLIP_WORDS
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer.from_pretrained(str(out), bos_token="[DEC]")
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=40,
                         bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16, image_text_hidden_size=16)
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    torch.manual_seed(0)
    for name, cls in (("cap", BlipForConditionalGeneration), ("itm", BlipForImageTextRetrieval)):
        cls(cfg).save_pretrained(out / name)
        proc.save_pretrained(out / name)
    return out


def test_blip_captioner_strips_prompt_and_beam(blip_dir):
    cap = load_captioner({"kind": "blip", "path": str(blip_dir / "cap")}, device="cpu")
    assert isinstance(cap, BlipCaptioner)
    ims = [toy_sample("red", "left"), toy_sample("blue", "top", size=50)]
    out = cap.caption(ims, n=3, top_p=0.9, max_len=4, min_len=1, seed=0)
    assert len(out) == 2 and all(len(c) == 3 for c in out)
    # every word is one token here, so at most max_len words: the 3-word prompt is cut off
    assert all(len(t.split()) <= 4 for c in out for t in c)
    assert all("[DEC]" not in t and "[SEP]" not in t for c in out for t in c)
    assert out == cap.caption(ims, n=3, top_p=0.9, max_len=4, min_len=1, seed=0)
    beams = cap.caption(ims, n=2, beam=3, max_len=4)
    assert [len(c) for c in beams] == [2, 2]
    with pytest.raises(ValueError, match="beam"):
        cap.caption(ims, n=4, beam=3)


def test_blip_itm_groups_match_model_forward(blip_dir):
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    flt = load_filter({"kind": "blip_itm", "path": str(blip_dir / "itm"), "batch_size": 2}, device="cpu")
    assert isinstance(flt, BlipItmFilter)
    ims = [toy_sample("red", "left"), toy_sample("blue", "top"), toy_sample("green", "right")]
    texts = [["a red square", "on the left top"], ["blue"], ["green square right", "a", "the top"]]
    got = flt.score_groups(ims, texts)
    proc = AutoProcessor.from_pretrained(blip_dir / "itm")
    model = BlipForImageTextRetrieval.from_pretrained(blip_dir / "itm").eval()
    for im, group, g in zip(ims, texts, got):
        inp = proc(images=[im] * len(group), text=group, return_tensors="pt", padding=True)
        with torch.no_grad():
            ref = model(**inp, use_itm_head=True).itm_score.softmax(-1)[:, 1].numpy()
        assert np.allclose(g, ref, atol=1e-5)


def test_stage_with_tiny_blip(blip_dir):
    cfg = CapfiltConfig(captioner={"kind": "blip", "path": str(blip_dir / "cap")},
                        filter={"kind": "blip_itm", "path": str(blip_dir / "itm")},
                        n_captions=3, max_len=5, min_len=1, web_threshold=0.0, synth_threshold=0.0,
                        max_synthetic=2, device="cpu", batch_size=4, seed=1)
    st = CapfiltStage(cfg, None)
    st.setup(None)
    imgs = [_png(RED), b"broken", _png(BLUE, (64, 64)), _png(GREEN)]
    out = capfilt_pairs(st, imgs, ["a red square", "x", "红色的方块", "green"], ["en", None, None, "en"])
    assert out.num_rows == 4
    assert out.column("capfilt_status").to_pylist() == ["ok", "decode_error", "web_only", "ok"]
    caps, _ = _kept(st, out)
    assert caps[0][0]["text"] == "a red square" and caps[0][0]["origin"] == "web"
    assert 1 <= len(caps[0]) <= 3 and all(c["origin"] == "synthetic" for c in caps[0][1:])
    assert [c["origin"] for c in caps[2]] == ["web"]
    for cands in out.column("capfilt_candidates").to_pylist():
        for c in cands or []:
            assert 0.0 <= c["score"] <= 1.0
    again = capfilt_pairs(st, imgs, ["a red square", "x", "红色的方块", "green"], ["en", None, None, "en"])
    assert again.equals(out)  # sampling is seeded by the rows


# ---- the project's own model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def albef_ckpt(tmp_path_factory) -> Path:
    from albef_helpers import tiny_model
    from models.albef.checkpoint import save_config
    from models.albef.config import load_config

    out = tmp_path_factory.mktemp("albef") / "ckpt"
    tok = toy_tokenizer()
    model = tiny_model(tok)
    save_config(out, load_config("tiny", tiny_overrides(**{"text.vocab_size": tok.vocab_size})))
    tok.save(out / "tokenizer")
    torch.save({"model": model.state_dict(), "step": 0}, out / "model.pt")
    return out


def test_albef_filter_matches_itm_score(albef_ckpt):
    from models.albef.inference import AlbefInference

    flt = load_filter({"kind": "albef", "path": str(albef_ckpt), "batch_size": 2}, device="cpu")
    assert isinstance(flt, AlbefItmFilter)
    ims = [toy_sample("red", "left"), toy_sample("blue", "top"), toy_sample("green", "right")]
    texts = [["a red square on the left", "左边有一个红色的方块"], ["a blue square"],
             ["green", "a yellow square on the top", "右边"]]
    got = flt.score_groups(ims, texts)
    ref = AlbefInference.load(albef_ckpt).itm_score([im for im, g in zip(ims, texts) for _ in g],
                                                    [t for g in texts for t in g])
    assert np.allclose(np.concatenate(got), ref, atol=1e-5)
    assert np.allclose(flt.score_pairs(ims, ["a", "b", "c"]),
                       AlbefInference.load(albef_ckpt).itm_score(ims, ["a", "b", "c"]), atol=1e-5)


def test_stage_with_own_model(albef_ckpt):
    spec = {"kind": "albef", "path": str(albef_ckpt)}
    st = CapfiltStage({"captioner": spec, "filter": spec, "n_captions": 3, "max_len": 6,
                       "web_threshold": 0.0, "synth_threshold": 0.0, "max_synthetic": 2,
                       "synthetic_language": "any", "device": "cpu", "seed": 0}, None)
    st.setup(None)
    # captioner and filter name the same checkpoint: one model in memory
    assert st.captioners["*"].inf is st.filters["*"].inf
    buf = io.BytesIO()
    toy_sample("red", "left").save(buf, format="JPEG")
    out = capfilt_pairs(st, [buf.getvalue(), _png(BLUE)], ["a red square on the left", "蓝色的方块"])
    kept, passed = _kept(st, out)
    assert passed == [True, True]
    for caps, cands in zip(kept, out.column("capfilt_candidates").to_pylist()):
        assert caps[0]["origin"] == "web" and len(caps) <= 3
        assert 2 <= len(cands) <= 4 and all(0 <= c["score"] <= 1 for c in cands)


def test_clip_filter_is_cosine(tmp_path):
    from models.clip import load_backend
    from models.clip.testing import tiny_open_clip_dir

    d = tiny_open_clip_dir(tmp_path / "oc")
    clip = {"kind": "open_clip", "path": str(d)}
    flt = load_filter({"kind": "clip", "clip": clip}, device="cpu")
    assert isinstance(flt, ClipFilter)
    ims = [toy_sample("red", "left"), toy_sample("blue", "top")]
    got = flt.score_groups(ims, [["a red square", "blue"], ["a blue square"]])
    be = load_backend(clip, device="cpu")
    ref = be.similarity(be.encode_images([ims[0], ims[0], ims[1]]),
                        be.encode_texts(["a red square", "blue", "a blue square"]))
    assert np.allclose(np.concatenate(got), ref, atol=1e-5)


def test_through_executor_shard_path(tmp_path):
    """The runner's path: columns read from the store (annotate's caption_clean/lang used),
    several batches per shard, output row-aligned and written atomically."""
    import json

    import pyarrow.parquet as pq

    from pipeline.executors import process_shard
    from pipeline.store import ColumnStore

    n = 5
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "meta.json").write_text(json.dumps({"n_shards": 1, "n_rows": n}))
    uid = pa.array(range(n), pa.int64())
    pq.write_table(pa.table({"uid": uid, "url": [f"http://x/{i}" for i in range(n)],
                             "caption": ["raw"] * n}), tmp_path / "input" / "00000.parquet")
    (tmp_path / "download").mkdir()
    pq.write_table(pa.table({"uid": uid, "image": pa.array([_png(RED), _png(BLUE), b"x", _png(RED), None],
                                                           pa.binary())}),
                   tmp_path / "download" / "00000.parquet")
    (tmp_path / "annotate").mkdir()
    pq.write_table(pa.table({"uid": uid, "decode_ok": [True, True, False, True, False],
                             "caption_clean": ["web", "蓝色", "web", "web", "web"],
                             "lang": ["en", "zh", "en", "en", None]}),
                   tmp_path / "annotate" / "00000.parquet")
    store = ColumnStore(tmp_path, ["download", "annotate", "capfilt"])
    cap = StubCaptioner({RED: ["syn"], BLUE: ["蓝色方块"]})
    st = _stage({"web": 0.9, "syn": 0.2, "蓝色": 0.1, "蓝色方块": 0.6}, cap, n_captions=1, batch_size=2)
    st.setup = lambda state=None: None  # stubs are already in place
    process_shard(st, store, 0)
    out = pq.read_table(tmp_path / "capfilt" / "00000.parquet")
    assert out.column("uid").to_pylist() == list(range(n))
    caps, passed = _kept(st, out)
    assert passed == [True, True, None, True, None]
    assert [[c["text"] for c in r] if r is not None else None for r in caps] == [
        ["web"], ["蓝色方块"], None, ["web"], None]
    assert cap.calls == [2, 1]  # batches of 2 rows: {0, 1}, {2, 3} (2 fails decode), {4} (no image)

    empty = st.process(_table([]).slice(0, 0))
    assert empty.num_rows == 0 and empty.schema.field("capfilt_candidates").type == CAPTION_LIST


def test_resolve_paths_relative_to_recipe(tmp_path):
    cfg = CapfiltConfig(captioner={"en": {"kind": "albef", "path": "ckpt/r0"},
                                   "zh": {"kind": "blip", "model": "Salesforce/blip-image-captioning-base"}},
                        filter={"kind": "clip", "clip": {"kind": "open_clip", "path": "oc"}})
    cfg.resolve_paths(tmp_path)
    assert cfg.captioners()["en"].path == str(tmp_path / "ckpt" / "r0")
    assert cfg.captioners()["zh"].path is None  # hub ids are not paths
    assert cfg.filters()["*"].clip.path == str(tmp_path / "oc")
    assert CapfiltConfig(filter={"kind": "albef", "path": "/abs/ckpt"}, n_captions=0
                         ).resolve_paths(tmp_path).filters()["*"].path == "/abs/ckpt"


def _select_for(cfg: CapfiltConfig, stages=("capfilt", "select")):
    from types import SimpleNamespace

    from pipeline.config import SelectConfig
    from pipeline.stage import RunContext
    from stages.select import SelectStage

    recipe = SimpleNamespace(stages=list(stages), capfilt=cfg, annotate=None, score=None)
    return SelectStage(SelectConfig(), RunContext(workdir="", recipe=recipe))


def test_select_applies_the_keep_rules():
    """capfilt's verdict is select's: every caption failing means reason `capfilt`; a row capfilt
    did not evaluate (null) is not judged on it; select writes the kept captions."""
    cap = StubCaptioner({RED: ["red thing"], BLUE: ["wrong thing"]})
    scores = {"red": 0.9, "red thing": 0.8, "blue": 0.1, "wrong thing": 0.2}
    st = _stage(scores, cap, n_captions=1, web_threshold=0.5, synth_threshold=0.5)
    out = st.process(_table([
        {"image": _png(RED), "caption": "red", "decode_ok": True},
        {"image": _png(BLUE), "caption": "blue", "decode_ok": True},
        {"image": None, "caption": "gone", "decode_ok": False},
    ]))
    out = out.append_column("uid", pa.array(range(3), pa.int64()))

    def select(cfg):
        sel = _select_for(cfg)
        cols = sel.needed_columns(out.column_names)
        assert "capfilt_candidates" in cols
        res = sel.process(out.select(cols))
        assert res.column_names == ["decision", "reason", "captions", "capfilt_pass"]
        assert list(sel.provides) == res.column_names
        return res

    res = select(st.cfg)
    assert res.column("decision").to_pylist() == ["kept", "rejected", "kept"]
    assert res.column("reason").to_pylist() == [None, "capfilt", None]
    assert res.column("capfilt_pass").to_pylist() == [True, False, None]
    assert [[c["text"] for c in r] if r is not None else None for r in res.column("captions").to_pylist()] == [
        ["red", "red thing"], [], None]
    # Other thresholds on the same scores: no captioner or filter call, another decision.
    calls = list(cap.calls)
    res = select(st.cfg.model_copy(update={"web_threshold": 0.05, "max_synthetic": 0}))
    assert res.column("reason").to_pylist() == [None, None, None]
    assert [[c["text"] for c in r] if r is not None else None for r in res.column("captions").to_pylist()] == [
        ["red"], ["blue"], None]
    assert cap.calls == calls
    # A per-filter override applies to the rows that filter scored.
    res = select(st.cfg.model_copy(update={"filter": st.cfg.filter.model_copy(update={"web_threshold": 0.95})}))
    assert res.column("captions").to_pylist()[0] == [{"text": "red thing", "origin": "synthetic", "score": pytest.approx(0.8),
                                                      "scorer": "stub"}]


def test_select_needs_capfilt_columns_when_the_recipe_runs_capfilt():
    from pipeline.store import RunOrderError

    cfg = CapfiltConfig(filter={"kind": "albef", "path": "/unused"}, n_captions=0)
    with pytest.raises(RunOrderError, match="stage capfilt has not produced"):
        _select_for(cfg).needed_columns(["uid", "decode_ok"])
    # without capfilt in the recipe there is no capfilt rule, and no captions column
    sel = _select_for(cfg, stages=("select",))
    assert sel.needed_columns(["uid"]) == [] and "captions" not in sel.provides


def test_keep_rules_enter_selects_fingerprint_not_capfilts(tmp_path):
    """Changing a keep rule re-runs select (and export), never the captioner; settings that
    cannot change a result (device, threads, GPUs) re-run nothing."""
    from pipeline.config import recipe_from_dict
    from pipeline.fingerprint import stage_settings

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"weights v1")
    spec = {"kind": "albef", "path": str(tmp_path / "ckpt")}
    base = {"input": {"path": str(tmp_path / "urls.parquet")}, "workdir": str(tmp_path / "wd"),
            "stages": ["download", "annotate", "capfilt", "select", "export"],
            "capfilt": {"captioner": spec, "filter": spec, "n_captions": 2}}

    def digests(**capfilt):
        r = recipe_from_dict({**base, "capfilt": {**base["capfilt"], **capfilt}})
        return stage_settings(r, r.stages)

    ref = digests()
    for change in ({"web_threshold": 0.3}, {"synth_threshold": 0.7}, {"synth_margin": 0.1},
                   {"max_synthetic": 3}, {"primary": "best"}, {"filter": {**spec, "web_threshold": 0.2}}):
        d = digests(**change)
        assert d["capfilt"] == ref["capfilt"] and d["select"] != ref["select"], change
    for change in ({"device": "cuda"}, {"decode_threads": 9}, {"gpus": 0.5}, {"cpus": 8},
                   {"filter": {**spec, "batch_size": 7, "device": "cpu"}}):
        assert digests(**change) == ref, change
    for change in ({"n_captions": 3}, {"top_p": 0.8}, {"batch_size": 8}):  # sampling depends on these
        d = digests(**change)
        assert d["capfilt"] != ref["capfilt"] and d["select"] == ref["select"], change
    # The checkpoint's contents count, not only its path.
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"weights v2, retrained")
    assert digests()["capfilt"] != ref["capfilt"]
