import pytest
import torch

from albef_helpers import tiny_overrides, toy_tokenizer
from models.albef.config import load_config
from models.albef.model import AlbefModel
from models.albef.pretrained import apply_text_config, load_bert, load_vit


def _model(tok, **extra):
    cfg = load_config("tiny", tiny_overrides(**{"text.vocab_size": tok.vocab_size, **extra}))
    return AlbefModel(cfg, tok.token_ids())


def test_timm_vit_loads_and_matches(tmp_path):
    timm = pytest.importorskip("timm")
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            embed_dim=64, depth=2, num_heads=2, num_classes=0).eval()
    torch.save(ref.state_dict(), tmp_path / "vit.pth")
    tok = toy_tokenizer()
    model = _model(tok, **{"vision.pretrained": str(tmp_path / "vit.pth")})
    load_vit(model, tmp_path / "vit.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.visual.eval()(x), ref.forward_features(x), atol=1e-5)


def test_open_clip_vit_loads(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    clip = open_clip.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "patch_size": 8, "width": 64,
                                                    "layers": 2, "head_width": 32},
                          text_cfg={"context_length": 16, "vocab_size": 100, "width": 32,
                                    "heads": 2, "layers": 1})
    torch.save(clip.state_dict(), tmp_path / "oc.pt")
    tok = toy_tokenizer()
    with pytest.raises(ValueError, match="pre_norm"):
        load_vit(_model(tok), tmp_path / "oc.pt")
    model = _model(tok, **{"vision.pre_norm": True})
    load_vit(model, tmp_path / "oc.pt")
    assert torch.equal(model.visual.cls_token.flatten(), clip.visual.class_embedding)
    assert torch.equal(model.visual.blocks[1].attn.qkv.weight,
                       clip.visual.transformer.resblocks[1].attn.in_proj_weight)


def test_hf_bert_loads_and_matches(tmp_path):
    from transformers import BertConfig, BertModel
    tok = toy_tokenizer()
    hf_cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    bert = BertModel(hf_cfg).eval()
    bert.save_pretrained(tmp_path / "bert")
    tok.save(tmp_path / "bert")
    cfg = load_config("tiny", tiny_overrides(**{"text.pretrained": str(tmp_path / "bert"),
                                                "text.text_layers": 6, "text.fusion_layers": 6}))
    cfg = apply_text_config(cfg)
    assert (cfg.text.text_layers, cfg.text.fusion_layers, cfg.text.hidden) == (1, 1, 64)
    assert cfg.text.tokenizer == str(tmp_path / "bert")
    model = AlbefModel(cfg, tok.token_ids())
    missing = load_bert(model, tmp_path / "bert")
    assert missing and all("cross" in m for m in missing)  # only fusion cross-attention is new
    ids, mask = tok(["a red square on the left", "左边有一个红色的方块"], 16)
    with torch.no_grad():
        ours = model.text.eval().encode_text(ids, mask)
        theirs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
    valid = mask.bool()
    assert torch.allclose(ours[valid], theirs[valid], atol=1e-4)
    assert torch.equal(model.decoder.self_attn[0].q.weight, model.text.layers[0].self_attn.q.weight)
