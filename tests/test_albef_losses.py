import torch
import torch.nn.functional as F

from albef_helpers import tiny_model, toy_batch, toy_tokenizer
from models.albef import losses as L


def test_itc_targets_mix_momentum_and_onehot():
    torch.manual_seed(0)
    sim = torch.randn(4, 10, requires_grad=True)
    sim_m = torch.randn(4, 10)
    pos = torch.arange(4)
    # alpha = 0: plain InfoNCE against the positive column
    plain = L.itc_loss(sim, sim, sim_m, sim_m, pos, alpha=0.0)
    assert torch.allclose(plain, F.cross_entropy(sim, pos))
    # alpha = 1: pure distillation, minimised when logits equal the momentum logits
    d_same = L.itc_loss(sim_m, sim_m, sim_m, sim_m, pos, alpha=1.0)
    d_other = L.itc_loss(sim_m * 0.2, sim_m * 0.2, sim_m, sim_m, pos, alpha=1.0)
    assert d_same < d_other
    plain.backward()
    assert torch.isfinite(sim.grad).all()


def test_hard_negatives_never_pick_positive_or_identical_caption():
    g = torch.Generator().manual_seed(0)
    b = 6
    # the positive (diagonal) gets by far the highest similarity: a naive sampler would pick it
    sim = torch.full((b, b), -5.0)
    sim.fill_diagonal_(20.0)
    same = torch.eye(b, dtype=torch.bool)
    same[0, 3] = same[3, 0] = True  # samples 0 and 3 share a caption
    for _ in range(200):
        neg = L.sample_hard_negatives(sim, sim, same, generator=g)
        assert not same[torch.arange(b), neg.text_index].any()
        assert not same[torch.arange(b), neg.image_index].any()
        assert neg.text_valid.all() and neg.image_valid.all()


def test_hard_negatives_follow_similarity():
    g = torch.Generator().manual_seed(0)
    sim = torch.tensor([[0.0, 5.0, 0.0, 0.0]] * 4)
    same = torch.eye(4, dtype=torch.bool)
    picks = torch.stack([L.sample_hard_negatives(sim, sim, same, g).text_index for _ in range(100)])
    assert (picks[:, 0] == 1).float().mean() > 0.9  # the hardest negative dominates


def test_hard_negatives_invalid_when_only_positives():
    same = torch.ones(3, 3, dtype=torch.bool)
    neg = L.sample_hard_negatives(torch.zeros(3, 3), torch.zeros(3, 3), same)
    assert not neg.text_valid.any() and not neg.image_valid.any()


def test_same_caption():
    ids = torch.tensor([[2, 5, 3, 0], [2, 6, 3, 0]])
    all_ids = torch.tensor([[2, 5, 3, 0], [2, 6, 3, 0], [2, 5, 3, 0]])
    assert L.same_caption(ids, all_ids).tolist() == [[True, False, True], [False, True, False]]


def test_mlm_masking_rules():
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0, 1, 2, 3, 4])
    ids = torch.randint(5, 100, (200, 30), generator=g)
    ids[:, 0] = 2
    ids[:, 20] = 3
    ids[:, 21:] = 0
    masked, labels = L.mask_tokens(ids, special, mask_id=4, vocab_size=100, probability=0.15, generator=g)
    chosen = labels != -100
    assert not chosen[torch.isin(ids, special)].any(), "special tokens must never be masked"
    assert (labels[chosen] == ids[chosen]).all()
    assert (masked[~chosen] == ids[~chosen]).all()
    rate = chosen.sum() / (~torch.isin(ids, special)).sum()
    assert 0.13 < rate < 0.17
    frac_mask = (masked[chosen] == 4).float().mean()
    frac_keep = (masked[chosen] == ids[chosen]).float().mean()
    assert 0.75 < frac_mask < 0.85 and 0.06 < frac_keep < 0.15
    # random replacements are never special tokens
    replaced = chosen & (masked != 4) & (masked != ids)
    assert replaced.any() and not torch.isin(masked[replaced], special).any()


def test_momentum_update_and_queue_values():
    tok = toy_tokenizer()
    model = tiny_model(tok)
    m = model.cfg.momentum
    p = model.vision_proj.weight
    with torch.no_grad():
        p.add_(1.0)
    before = model.vision_proj_m.weight.clone()
    model.momentum_update()
    assert torch.allclose(model.vision_proj_m.weight, m * before + (1 - m) * p)
    assert not model.vision_proj_m.weight.requires_grad

    q = model.cfg.queue_size  # 32
    feats_i = F.normalize(torch.randn(20, model.cfg.embed_dim), dim=1)
    feats_t = F.normalize(torch.randn(20, model.cfg.embed_dim), dim=1)
    model.enqueue(feats_i, feats_t)
    assert int(model.queue_ptr) == 20
    assert torch.allclose(model.image_queue[:, :20], feats_i.T)
    assert torch.allclose(model.text_queue[:, :20], feats_t.T)
    model.enqueue(feats_i, feats_t)  # wraps around: 12 at the end, 8 at the start
    assert int(model.queue_ptr) == (40 % q)
    assert torch.allclose(model.image_queue[:, 20:], feats_i[:12].T)
    assert torch.allclose(model.image_queue[:, :8], feats_i[12:].T)


def test_forward_enqueues_momentum_features():
    tok = toy_tokenizer()
    model = tiny_model(tok)
    images, ids, mask, _ = toy_batch(tok, 8)
    model.train()
    model(images, ids, mask, alpha=0.4)
    with torch.no_grad():
        feat_m = F.normalize(model.vision_proj_m(model.visual_m(images)[:, 0]), dim=-1)
    assert int(model.queue_ptr) == 8
    assert torch.allclose(model.image_queue[:, :8].T, feat_m, atol=1e-5)
