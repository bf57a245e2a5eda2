import math

import torch

from albef_helpers import tiny_model, toy_batch, toy_tokenizer
from models.albef.config import available_configs, load_config


def test_configs_load():
    assert {"tiny", "albef-base"} <= set(available_configs())
    base = load_config("albef-base")
    assert (base.vision.image_size, base.vision.patch_size, base.vision.width) == (224, 16, 768)
    assert (base.text.text_layers, base.text.fusion_layers, base.embed_dim) == (6, 6, 256)
    assert base.queue_size == 65536 and base.momentum == 0.995 and base.temp == 0.07
    cfg = load_config("tiny", {"train.batch_size": 3})
    assert cfg.train.batch_size == 3


def test_every_loss_finite_and_decreasing():
    tok = toy_tokenizer()
    model = tiny_model(tok)
    images, ids, mask, _ = toy_batch(tok, 8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    hist = []
    for step in range(30):
        out = model(images, ids, mask, alpha=0.4 * min(1, step / 10))
        assert all(math.isfinite(v.item()) for v in out.values()), out
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append({k: v.item() for k, v in out.items()})
    for term in ("itc", "itm", "mlm", "lm", "loss"):
        first = sum(h[term] for h in hist[:3]) / 3
        last = sum(h[term] for h in hist[-3:]) / 3
        assert last < first, (term, first, last)


def test_grad_checkpointing_gives_same_gradients():
    tok = toy_tokenizer()
    images, ids, mask, _ = toy_batch(tok, 4)
    grads = []
    for on in (False, True):
        model = tiny_model(tok, grad_checkpointing=on)
        model.train()
        torch.manual_seed(1)
        model(images, ids, mask)["itc"].backward()
        grads.append(model.visual.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_decoder_is_causal_and_shares_encoder_weights():
    tok = toy_tokenizer()
    model = tiny_model(tok).eval()
    images, ids, mask, _ = toy_batch(tok, 2)
    emb = model.visual(images)
    logits = model.decoder_logits(ids, mask, emb)
    ids2 = ids.clone()
    ids2[:, 4:] = tok.token_ids().mask  # change the future
    logits2 = model.decoder_logits(ids2, mask, emb)
    assert torch.allclose(logits[:, :4], logits2[:, :4], atol=1e-5)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("decoder.") and ".ffn." in n for n in names)  # FFN is shared
    assert any(n.startswith("decoder.self_attn.") for n in names)  # own causal self-attention
